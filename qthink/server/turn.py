"""One assistant turn as protocol-neutral events (thinking, answer text, tool calls and their
arguments as written, finish), parsed by the Chat Completions stream parser, for the other wire
protocols to translate."""

import functools
import json
from dataclasses import dataclass, field
from typing import cast

from fastapi import Request
from pydantic import ValidationError

from qthink.engine.outputs import RequestOutput
from qthink.server.chat import ChatView, ChoiceStream, PreparedChat, prepare_chat, usage
from qthink.server.errors import APIError, validation_message
from qthink.server.protocol import ChatCompletionRequest
from qthink.server.streaming import OutputStream, stream_outputs, unless_disconnected


@dataclass
class Reasoning:
    text: str


@dataclass
class Text:
    text: str


@dataclass
class ToolCall:
    """A call as soon as its name is known; its arguments (JSON text) may follow as ToolArguments."""

    id: str
    name: str
    arguments: str


@dataclass
class ToolArguments:
    """More argument text of the last ToolCall, as the model writes it."""

    text: str


@dataclass
class Finish:
    reason: str | None  # stop, length, tool_calls, abort, error
    stop_reason: str | int | None
    usage: dict  # Chat Completions usage: prompt/completion/reasoning tokens
    error: str | None = None
    thinking_cut_by: str | None = None  # how the engine closed the thinking, if it did
    timing: dict = field(default_factory=dict)  # the engine's arrival, first_token, now (monotonic)


@dataclass
class Turn:
    """A submitted request: its id (the engine's, for end_thinking), what was asked, its outputs."""

    id: str
    chat: PreparedChat
    outputs: OutputStream
    view: ChatView


def translation(fn):
    """Marks a protocol's request translation: a value of the wrong shape deep in the body (a
    number where an object belongs, say) is the client's 400, never a server error."""

    @functools.wraps(fn)
    def translate(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (AttributeError, TypeError, KeyError) as e:
            raise APIError(400, f"a value in the request has the wrong type or shape ({e})") from None

    return translate


def chat_completion_request(**fields) -> ChatCompletionRequest:
    """The translated request; a value the chat request refuses (out of range, say) is a 400."""
    try:
        return ChatCompletionRequest(**fields)
    except ValidationError as e:
        raise APIError(400, validation_message(e.errors())[0]) from None


def check_model(server, model: str | None) -> None:
    names = server.served_names or (server.model_name,)
    if model is not None and model not in names:
        raise APIError(
            400,
            f"model {model!r} is not served here; this server serves {', '.join(map(repr, names))}",
            param="model",
            code="model_not_found",
        )


async def start_turn(
    req: ChatCompletionRequest, server, request_id: str, fit_max_tokens: bool = False
) -> Turn:
    if req.n != 1:
        raise APIError(400, "only one answer per request (n=1) is supported here", param="n")
    chat = await prepare_chat(req, server, fit_max_tokens)
    view = ChatView(
        req.model_copy(update={"include_reasoning": True, "logprobs": False}),
        server.model_name,
        chat.format,
        chat.thinking,
        chat.parse_tools,
        chat.plan,
    )
    outputs = await stream_outputs(server, chat.prompt, chat.params, request_id=request_id)
    return Turn(request_id, chat, outputs, view)


async def events(turn: Turn):
    """The turn's events as they come; the last is a Finish."""
    state = ChoiceStream(turn.view)
    last = None
    async for out in turn.outputs:
        last = out
        c = out.outputs[0]
        for delta, *_ in state.advance(c):
            if delta.get("reasoning_content"):
                yield Reasoning(delta["reasoning_content"])
            if delta.get("content"):
                yield Text(delta["content"])
            for d in delta.get("tool_calls") or []:
                function = d["function"]
                if "id" in d:
                    yield ToolCall(d["id"], function["name"], function.get("arguments") or "")
                elif function.get("arguments"):
                    yield ToolArguments(function["arguments"])
    last = cast(RequestOutput, last)  # the engine always sends a final output
    c = last.outputs[0]
    reason = "tool_calls" if state.made_calls else c.finish_reason
    used = usage(last, turn.chat.format, turn.chat.thinking)
    yield Finish(reason, c.stop_reason, used, last.error, c.thinking_cut_by, last.metrics)


async def blocks(turn: Turn):
    """The events grouped into output blocks (a thinking, a text, each tool call):
    ("start", event), ("delta", event)..., ("stop", None); last ("finish", Finish)."""
    kind = None
    async for e in events(turn):
        if isinstance(e, Finish):
            if kind is not None:
                yield "stop", None
            yield "finish", e
            return
        continues = type(e) is kind or (kind is ToolCall and isinstance(e, ToolArguments))
        if kind is not None and (not continues or isinstance(e, ToolCall)):
            yield "stop", None
            kind = None
        if kind is None:
            yield "start", e
            kind = type(e)
        yield "delta", e


@dataclass
class WholeTurn:
    reasoning: str | None = None
    text: str | None = None
    calls: list[ToolCall] = field(default_factory=list)
    finish: Finish | None = None


async def whole_turn(turn: Turn, request: Request) -> WholeTurn:
    """Run the turn to its end (cancelled if the client leaves); an engine failure is a 500."""
    result = await unless_disconnected(request, _collect(turn))
    if result.finish.error:
        raise APIError(500, result.finish.error, kind="server_error", code="engine_error")
    return result


async def _collect(turn: Turn) -> WholeTurn:
    whole = WholeTurn()
    async for e in events(turn):
        if isinstance(e, Reasoning):
            whole.reasoning = (whole.reasoning or "") + e.text
        elif isinstance(e, Text):
            whole.text = (whole.text or "") + e.text
        elif isinstance(e, ToolCall):
            whole.calls.append(ToolCall(e.id, e.name, e.arguments))
        elif isinstance(e, ToolArguments):
            whole.calls[-1].arguments += e.text
        else:
            whole.finish = e
    return whole


def arguments_object(arguments: str) -> dict:
    """A call's arguments as an object (an announced call whose JSON went bad later gives {})."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
