"""Agent runtime: the Assistant loop, tools, MCP servers, the code interpreter."""

from qthink.extras import require

require("agent")

from qthink.agent.assistant import Assistant  # noqa: E402  (after the check above)
from qthink.agent.tools import TOOL_REGISTRY, Tool, ToolError, function_tool, register_tool  # noqa: E402

__all__ = ["Assistant", "TOOL_REGISTRY", "Tool", "ToolError", "function_tool", "register_tool"]
