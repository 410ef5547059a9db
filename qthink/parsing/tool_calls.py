"""Hermes tool calls (`<tool_call>{json}</tool_call>`) in the answer, whole or streamed, in OpenAI's shape."""

import json
import re
import uuid
from typing import cast

from qthink.parsing.json_prefix import JsonPrefix
from qthink.parsing.text_stream import partial_suffix

START, END = "<tool_call>", "</tool_call>"

# The start of a block whose arguments can stream: the name first, then an arguments object.
STREAMABLE_HEAD = re.compile(
    r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)'
)
# A block whose head has not shown up in this many characters is decided when it closes.
HEAD_WINDOW = 1024


def tool_names(tools: list[dict] | None) -> set[str]:
    names = set()
    for tool in tools or []:
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_call(body: str, names: set[str]) -> tuple[str, str] | None:
    """(name, arguments JSON text) of one block's body, or None when it is not a call: not
    JSON, a name that is not one of `names`, arguments that are not an object (or a string
    holding one). Arguments keep the model's own text, as streaming sends it."""
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or data["name"] not in names:
        return None
    arguments = data.get("arguments", data.get("parameters"))
    if arguments is None:
        return data["name"], "{}"
    if isinstance(arguments, str):  # serialized already: passed through when it holds an object
        try:
            return (data["name"], arguments) if isinstance(json.loads(arguments), dict) else None
        except (ValueError, RecursionError):
            return None
    if not isinstance(arguments, dict):
        return None
    return data["name"], _arguments_text(body, arguments) or json.dumps(arguments, ensure_ascii=False)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _arguments_text(body: str, arguments: dict) -> str | None:
    """The arguments object as the model wrote it, when the block has the streamable shape."""
    head = STREAMABLE_HEAD.match(body)
    if head is None:
        return None
    scanner = JsonPrefix()
    taken = scanner.feed(body[head.end() :])
    text = body[head.end() : head.end() + taken]
    return text if scanner.done and json.loads(text) == arguments else None


def parse_tool_calls(text: str | None, tools: list[dict] | None) -> tuple[str | None, list[dict]]:
    """(content without the parsed blocks, calls). Pass the answer only: a <tool_call> in
    the thinking is the model musing, not a call. Never raises: what is not a call is content."""
    parser = ToolCallStreamParser(tools)
    deltas = parser.feed(text or "", final=True)
    content = "".join(d["content"] for d in deltas if "content" in d)
    content = content.strip() if parser.names else content
    calls = [
        {"id": c["id"], "type": "function", "function": dict(c["function"])}
        for c in (d["tool_call"] for d in deltas if "tool_call" in d)
    ]
    return content or None, calls


class _Block:
    """One `<tool_call>` being read: its text so far and, once its name is known, its call."""

    def __init__(self) -> None:
        self.body = ""
        self.index: int | None = None  # set when the call has been announced
        self.args_start = 0
        self.args = JsonPrefix()
        self.sent = 0  # characters of the arguments already sent
        self.undecided = True  # still looking for a streamable head


class ToolCallStreamParser:
    """Content deltas in; OpenAI stream deltas out. Plain content goes out as it comes (holding
    back what may be the start of `<tool_call>`). A block that starts `{"name": <known tool>,
    "arguments": {` is announced (index, id, name) as soon as that much is written, and its
    arguments follow as they are generated, while they are well-formed JSON so far; any other
    block is decided when it closes (or the output ends): a call, sent whole, or content. Fed
    the whole text at once it gives what `parse_tool_calls` gives."""

    def __init__(self, tools: list[dict] | None):
        self.names = tool_names(tools)
        self.buffer = ""
        self.block: _Block | None = None
        self.count = 0

    def feed(self, text: str, final: bool = False) -> list[dict]:
        """Deltas: `{"content": str}` or `{"tool_call": {index, [id, type,] function}}`."""
        self.buffer += text
        if not self.names:
            out, self.buffer = self.buffer, ""
            return [{"content": out}] if out else []
        deltas: list[dict] = []
        while True:
            if self.block is None and not self._open_block(deltas, final):
                return deltas
            block = cast(_Block, self.block)  # _open_block set it
            end = self.buffer.find(END)
            if end >= 0:
                block.body += self.buffer[:end]
                self.buffer = self.buffer[end + len(END) :]
                deltas += self._close(closed=True)
                continue
            keep = 0 if final else partial_suffix(self.buffer, END)
            block.body += self.buffer[: len(self.buffer) - keep]
            self.buffer = self.buffer[len(self.buffer) - keep :]
            deltas += self._close(closed=False) if final else self._progress()
            return deltas

    def _open_block(self, deltas: list[dict], final: bool) -> bool:
        """Send the content before the next `<tool_call>` and open it; False when there is none."""
        start = self.buffer.find(START)
        if start < 0:
            keep = 0 if final else partial_suffix(self.buffer, START)
            emit = self.buffer[: len(self.buffer) - keep]
            self.buffer = self.buffer[len(emit) :]
            if emit:
                deltas.append({"content": emit})
            return False
        if start:
            deltas.append({"content": self.buffer[:start]})
        self.buffer = self.buffer[start + len(START) :]
        self.block = _Block()
        return True

    def _progress(self) -> list[dict]:
        """What an open block can send already: its announcement, then new argument text."""
        block, deltas = cast(_Block, self.block), []
        if block.undecided:
            head = STREAMABLE_HEAD.match(block.body)
            if head is None:
                block.undecided = len(block.body) < HEAD_WINDOW
                return []
            block.undecided = False
            name = json.loads(head.group(1))
            if name not in self.names:
                return []
            block.index, block.args_start = self._next_index(), head.end()
            deltas.append(_announce(block.index, name, ""))
        if block.index is None or block.args.done or block.args.broken:
            return deltas
        block.args.feed(block.body[block.args_start + block.args.consumed :])
        new = block.body[block.args_start + block.sent : block.args_start + block.args.consumed]
        if new:
            block.sent += len(new)
            deltas.append({"tool_call": {"index": block.index, "function": {"arguments": new}}})
        return deltas

    def _close(self, closed: bool) -> list[dict]:
        """Decide a block at its `</tool_call>`, or at the end of the output without one."""
        block, self.block = cast(_Block, self.block), None
        call = parse_call(block.body, self.names)
        if block.index is None:
            if call is None:
                return [{"content": START + block.body + (END if closed else "")}]
            return [_announce(self._next_index(), *call)]
        # announced already: send what is left of valid arguments; a block that went bad after
        # its announcement keeps the arguments sent (a stream cannot take a call back)
        sent = block.body[block.args_start : block.args_start + block.sent]
        if call is None or not call[1].startswith(sent) or call[1] == sent:
            return []
        return [{"tool_call": {"index": block.index, "function": {"arguments": call[1][len(sent) :]}}}]

    def _next_index(self) -> int:
        index, self.count = self.count, self.count + 1
        return index


def _announce(index: int, name: str, arguments: str) -> dict:
    return {
        "tool_call": {
            "index": index,
            "id": new_call_id(),
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
    }
