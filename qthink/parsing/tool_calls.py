"""Hermes tool calls (`<tool_call>{json}</tool_call>`) in the answer, whole or streamed, in OpenAI's shape."""

import json
import re
import uuid

from qthink.parsing.text_stream import partial_suffix

START, END = "<tool_call>", "</tool_call>"
BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def tool_names(tools: list[dict] | None) -> set[str]:
    names = set()
    for tool in tools or []:
        function = tool.get("function", tool)
        if function.get("name"):
            names.add(function["name"])
    return names


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_call(body: str, names: set[str]) -> dict | None:
    """The OpenAI tool call for one block's JSON, or None when it is malformed or names an
    unknown tool (then the block stays in the content, where a person can see it)."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("name") not in names:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {
        "id": new_call_id(),
        "type": "function",
        "function": {"name": data["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def parse_tool_calls(text: str | None, tools: list[dict] | None) -> tuple[str | None, list[dict]]:
    """(content without the parsed blocks, calls). Pass the answer only: a <tool_call> in
    the thinking is the model musing, not a call."""
    names = tool_names(tools)
    if not names:
        return (text or None), []
    if not text or START not in text:
        return (text.strip() if text else None) or None, []
    calls, kept, last = [], [], 0
    for match in BLOCK.finditer(text):
        call = parse_call(match.group(1).strip(), names)
        if call is None:
            continue
        kept.append(text[last : match.start()])
        last = match.end()
        calls.append(call)
    kept.append(text[last:])
    content = "".join(kept).strip()
    return (content or None), calls


class ToolCallStreamParser:
    """Content deltas in; OpenAI stream deltas out: plain content as it comes (holding back
    what may be the start of `<tool_call>`), and for each complete, valid block a tool-call
    delta with its index, id and name first, then its arguments. Streamed and whole parsing
    give the same calls and content (content modulo surrounding whitespace)."""

    def __init__(self, tools: list[dict] | None):
        self.names = tool_names(tools)
        self.buffer = ""
        self.count = 0
        self.calls: list[dict] = []

    def feed(self, text: str, final: bool = False) -> list[dict]:
        """Deltas: `{"content": str}` or `{"tool_call": {index, id, type, function}}`."""
        self.buffer += text
        if not self.names:
            out, self.buffer = self.buffer, ""
            return [{"content": out}] if out else []
        deltas = []
        while self.buffer:
            start = self.buffer.find(START)
            if start < 0:
                keep = 0 if final else partial_suffix(self.buffer, START)
                emit = self.buffer[: len(self.buffer) - keep]
                self.buffer = self.buffer[len(emit) :]
                if emit:
                    deltas.append({"content": emit})
                break
            if start:
                deltas.append({"content": self.buffer[:start]})
                self.buffer = self.buffer[start:]
            end = self.buffer.find(END)
            if end < 0:
                if final:  # an unclosed block never becomes a call
                    deltas.append({"content": self.buffer})
                    self.buffer = ""
                break
            block = self.buffer[: end + len(END)]
            self.buffer = self.buffer[end + len(END) :]
            call = parse_call(block[len(START) : -len(END)].strip(), self.names)
            if call is None:
                deltas.append({"content": block})
            else:
                deltas.extend(self._call_deltas(call))
        return deltas

    def _call_deltas(self, call: dict) -> list[dict]:
        index, self.count = self.count, self.count + 1
        self.calls.append(call)
        head = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        args = {"index": index, "function": {"arguments": call["function"]["arguments"]}}
        return [{"tool_call": head}, {"tool_call": args}]
