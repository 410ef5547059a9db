"""`Assistant`: the tool-calling loop, with Qwen-Agent's configuration shapes and streaming habits."""

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from qthink.agent.model_client import make_chat_model
from qthink.agent.tools import TOOL_REGISTRY, Tool, function_tool, run_tool

if TYPE_CHECKING:
    from qthink.agent.mcp_client import MCPManager

log = logging.getLogger("qthink.agent")


class Assistant:
    """`Assistant(llm={'model', 'model_server': URL | 'local', 'api_key', 'generate_cfg'},
    function_list=[...], system_message=..., max_rounds=...)`.

    function_list takes registered tool names ('code_interpreter'), `{'name': ..., **cfg}`
    dicts, `{'mcpServers': {...}}` configs, `Tool` instances and plain functions.
    max_rounds caps the model calls of one `run`; the last one is offered no tools, so the
    model must answer with what it has.
    """

    def __init__(
        self,
        llm: dict,
        function_list: list | None = None,
        system_message: str | None = None,
        max_rounds: int = 10,
        name: str | None = None,
    ):
        self.name = name
        self.system_message = system_message
        self.max_rounds = max_rounds
        self.mcp_managers: list[MCPManager] = []
        self.tools: dict[str, Tool] = {}
        try:
            for item in function_list or []:
                for tool in self._make_tools(item):
                    self.tools[tool.name] = tool
            self.model = make_chat_model(llm)
        except BaseException:
            self.close()
            raise

    def run(self, messages: list[dict], **kwargs) -> Iterator[list[dict]]:
        """Yield the growing list of response messages: assistant turns (with their
        `reasoning_content`), and `tool` results, until the model answers without calls.
        Extra keyword arguments (Qwen-Agent's `lang`, ...) are accepted and ignored."""
        history = self._history(messages)
        response: list[dict] = []
        for round_index in range(self.max_rounds):
            last_round = round_index == self.max_rounds - 1
            tools = None if last_round or not self.tools else self.tool_schemas()
            message: dict[str, Any] = {"role": "assistant", "content": ""}
            for message in self.model.stream(history + response, tools):
                yield response + [message]
            if not tools:
                message.pop("tool_calls", None)
            response.append(message)
            yield list(response)
            if not message.get("tool_calls"):
                return
            response.extend(self.call_tools(message["tool_calls"]))
            yield list(response)

    def run_nonstream(self, messages: list[dict], **kwargs) -> list[dict]:
        """The final response list of `run`."""
        final: list[dict] = []
        for final in self.run(messages, **kwargs):  # noqa: B007 — the last state is the result
            pass
        return final

    def call_tools(self, tool_calls: list[dict]) -> list[dict]:
        """Run one turn's calls concurrently; results come back in the calls' order."""
        with ThreadPoolExecutor(max_workers=max(1, len(tool_calls))) as pool:
            texts = list(pool.map(self._call_one, tool_calls))
        return [
            {
                "role": "tool",
                "tool_call_id": call.get("id", ""),
                "name": call["function"]["name"],
                "content": text,
            }
            for call, text in zip(tool_calls, texts)
        ]

    def tool_schemas(self) -> list[dict]:
        return [tool.schema() for tool in self.tools.values()]

    def close(self) -> None:
        """Stop MCP servers and kernels."""
        for tool in self.tools.values():
            tool.close()
        for manager in self.mcp_managers:
            manager.close()

    def __enter__(self) -> "Assistant":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call_one(self, call: dict) -> str:
        name = call["function"]["name"]
        tool = self.tools.get(name)
        if tool is None:
            return f"Error: there is no tool named {name!r}. Available tools: {', '.join(self.tools)}."
        return run_tool(tool, call["function"].get("arguments") or "{}")

    def _history(self, messages: list[dict]) -> list[dict]:
        """Messages as sent to the model: the system message first, and the thinking of turns
        before the last user message dropped (the template renders them without it anyway)."""
        history = [dict(m) for m in messages]
        if self.system_message and (not history or history[0]["role"] != "system"):
            history.insert(0, {"role": "system", "content": self.system_message})
        last_user = max((i for i, m in enumerate(history) if m["role"] == "user"), default=-1)
        for message in history[:last_user]:
            message.pop("reasoning_content", None)
            message.pop("reasoning", None)
        return history

    def _make_tools(self, item) -> list[Tool]:
        if isinstance(item, Tool):
            return [item]
        if isinstance(item, str):
            return [_registered(item, {})]
        if isinstance(item, dict) and "mcpServers" in item:
            from qthink.agent.mcp_client import MCPManager

            manager = MCPManager(item)
            self.mcp_managers.append(manager)
            return list(manager.tools())
        if isinstance(item, dict):
            cfg = {k: v for k, v in item.items() if k != "name"}
            return [_registered(item["name"], cfg)]
        if callable(item):
            return [function_tool(item)]
        raise TypeError(f"cannot make a tool from {item!r}")


def _registered(name: str, cfg: dict) -> Tool:
    if name == "code_interpreter":
        import qthink.agent.code_interpreter  # noqa: F401 — registers the tool

    if name not in TOOL_REGISTRY:
        raise ValueError(f"unknown tool {name!r}; registered: {', '.join(sorted(TOOL_REGISTRY))}")
    return TOOL_REGISTRY[name](cfg)
