"""Agent runtime: the Assistant loop, tools, MCP servers, the code interpreter."""

from qthink.agent.assistant import Assistant
from qthink.agent.tools import TOOL_REGISTRY, Tool, ToolError, function_tool, register_tool

__all__ = ["Assistant", "TOOL_REGISTRY", "Tool", "ToolError", "function_tool", "register_tool"]
