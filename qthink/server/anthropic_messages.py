"""POST /v1/messages and /v1/messages/count_tokens (Anthropic Messages API), translated onto the chat path."""

import hashlib
import json
import uuid
from typing import Literal, cast

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from qthink.server.chat import render_prompt
from qthink.server.errors import APIError
from qthink.server.protocol import ChatCompletionRequest
from qthink.server.streaming import event_stream, request_id_header
from qthink.server.turn import (
    Finish,
    Reasoning,
    Text,
    ToolCall,
    Turn,
    arguments_object,
    blocks,
    chat_completion_request,
    check_model,
    start_turn,
    translation,
    whole_turn,
)


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant", "system"]  # Claude Code sends system turns among the messages
    content: str | list[dict]


class CountTokensRequest(BaseModel):
    """The fields this server reads; any other field is refused by name."""

    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict] | None = None
    tools: list[dict] | None = None
    tool_choice: dict | None = None
    thinking: dict | None = None
    context_management: dict | None = None  # only edits that keep everything: nothing is cleared here


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stream: bool = False
    output_config: dict | None = None  # effort (a thinking budget) and format (a JSON schema)
    metadata: dict | None = None
    service_tier: str | None = None


def add_messages_routes(app: FastAPI, server) -> None:
    @app.post("/v1/messages")
    async def create(req: MessagesRequest, request: Request):
        check_model(server, req.model)
        return await create_message(req, server, request)

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(req: CountTokensRequest):
        check_model(server, req.model)
        _, prompt = await render_prompt(chat_request(req), server)
        return {"input_tokens": len(prompt)}


async def create_message(req: MessagesRequest, server, request: Request):
    message_id = f"msg_{uuid.uuid4().hex}"
    # Anthropic's clients ask for their model's largest output (Claude Code: 32,000); here
    # max_tokens is a cap, lowered to what the context leaves, and stop_reason says max_tokens.
    turn = await start_turn(chat_request(req, server.efforts), server, message_id, fit_max_tokens=True)
    if req.stream:
        return event_stream(stream_message(turn, req, server.model_name), message_id, streams=[turn.outputs])
    whole = await whole_turn(turn, request)
    content = []
    if whole.reasoning is not None:
        content.append(_thinking_block(whole.reasoning))
    if whole.text:
        content.append({"type": "text", "text": whole.text})
    content += [_tool_use_block(c) for c in whole.calls]
    finish = cast(Finish, whole.finish)  # the turn ran to its Finish
    body = {
        **_message(message_id, server.model_name, content),
        **_stop(finish, req),
        "usage": _usage(finish),
        "thinking_budget": turn.chat.plan.metadata(finish.thinking_cut_by),
    }
    return request_id_header(body, message_id)


# ---- request translation ------------------------------------------------------------------


@translation
def chat_request(req: CountTokensRequest, efforts=None) -> ChatCompletionRequest:
    _check_context_management(req.context_management)
    messages = [{"role": "system", "content": _text(req.system, "system")}] if req.system else []
    for i, m in enumerate(req.messages):
        messages += _chat_messages(m, f"messages.{i}.content")
    budget, kwargs = _thinking(req.thinking)
    choice, parallel = _tool_choice(req.tool_choice)
    fields = {}
    if isinstance(req, MessagesRequest):
        config = req.output_config or {}
        if set(config) - {"effort", "format"}:
            raise APIError(
                400, f"output_config.{sorted(set(config) - {'effort', 'format'})[0]} is not supported"
            )
        if config.get("effort") is not None and budget is None and not kwargs:
            budget = efforts.tokens(config["effort"], "output_config.effort")
        fields = {
            "response_format": _response_format(config.get("format")),
            "max_tokens": req.max_tokens,
            "stop": req.stop_sequences,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "top_k": req.top_k,
        }
    return chat_completion_request(
        messages=messages,
        tools=_tools(req.tools),
        tool_choice=choice,
        parallel_tool_calls=parallel,
        max_thinking_tokens=budget,
        chat_template_kwargs=kwargs,
        **fields,
    )


def _chat_messages(m: AnthropicMessage, where: str) -> list[dict]:
    """One Anthropic message as chat messages: tool results become tool turns; an assistant's
    thinking, text and tool uses become one assistant turn."""
    if isinstance(m.content, str):
        return [{"role": m.role, "content": m.content}]
    out, texts, reasoning, calls = [], [], None, []
    for j, block in enumerate(m.content):
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_result" and m.role == "user":
            content = _text(block.get("content") or "", f"{where}.{j}.content")
            out.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": content})
        elif kind == "tool_use" and m.role == "assistant":
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            call = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": call})
        elif kind == "thinking" and m.role == "assistant":
            reasoning = (reasoning or "") + block.get("thinking", "")
        elif kind == "redacted_thinking" and m.role == "assistant":
            continue  # never produced here; nothing readable to give the model
        else:
            raise APIError(400, f"{where}.{j}: a {kind!r} block in a {m.role} message is not supported")
    if m.role != "assistant":
        return out + ([{"role": m.role, "content": "".join(texts)}] if texts else [])
    message: dict = {"role": "assistant", "content": "".join(texts) or None}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = calls
    return [message]


def _check_context_management(management: dict | None) -> None:
    """qthink keeps the whole conversation it is sent; an edit that keeps all of it is a no-op,
    any other edit (clearing tool results or thinking) is refused rather than ignored."""
    for i, edit in enumerate((management or {}).get("edits") or []):
        if not (str(edit.get("type", "")).startswith("clear_thinking") and edit.get("keep") == "all"):
            raise APIError(
                400, f"context_management.edits.{i}: only clear_thinking with keep=all is supported"
            )


def _text(content: str | list[dict], where: str) -> str:
    if isinstance(content, str):
        return content
    if any(b.get("type") != "text" for b in content):
        raise APIError(400, f"{where}: only text blocks are supported here")
    return "".join(b.get("text", "") for b in content)


def _response_format(fmt: dict | None) -> dict | None:
    if fmt is None:
        return None
    if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise APIError(400, "output_config.format must be {type: json_schema, schema: {...}}")
    return {"type": "json_schema", "json_schema": {"schema": fmt["schema"]}}


def _thinking(thinking: dict | None) -> tuple[int | None, dict]:
    """Anthropic's thinking switch as the one thinking budget (enforced, unlike a hint)."""
    kind = (thinking or {}).get("type")
    if kind is None or kind == "adaptive":
        return None, {}
    if kind == "disabled":
        return None, {"enable_thinking": False}
    budget = cast(dict, thinking).get("budget_tokens")  # a kind was given, so thinking is set
    if kind != "enabled" or not isinstance(budget, int) or budget < 0:
        raise APIError(
            400,
            "thinking must be {type: enabled, budget_tokens: N >= 0}, {type: disabled} or {type: adaptive}",
        )
    return budget, {}


def _tools(tools: list[dict] | None) -> list[dict] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type", "custom") != "custom" or not isinstance(tool.get("name"), str):
            raise APIError(
                400, f"tools.{i}: only custom tools (name, input_schema) are supported, got {tool!r}"
            )
        spec = {"name": tool["name"]}  # the order the chat template prints, as Chat Completions has it
        if tool.get("description"):
            spec["description"] = tool["description"]
        spec["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": spec})
    return out


def _tool_choice(choice: dict | None) -> tuple[str | dict | None, bool]:
    if choice is None:
        return None, True
    parallel = not choice.get("disable_parallel_tool_use", False)
    kind = choice.get("type")
    if kind == "tool" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    if kind in ("auto", "any", "none"):
        return {"auto": "auto", "any": "required", "none": "none"}[kind], parallel
    raise APIError(400, f"tool_choice must be auto, any, none or a tool by name, got {choice!r}")


# ---- response objects ---------------------------------------------------------------------


def _signature(thinking: str) -> str:
    """A digest of the thinking: clients that keep thinking blocks expect a signature."""
    return hashlib.sha256(thinking.encode()).hexdigest()


def _thinking_block(text: str) -> dict:
    return {"type": "thinking", "thinking": text, "signature": _signature(text)}


def _tool_use_block(call: ToolCall, arguments: str | None = None) -> dict:
    call_input = arguments_object(call.arguments) if arguments is None else {}
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": call_input}


def _message(message_id: str, model: str, content: list[dict]) -> dict:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": content}


def _stop(finish: Finish, req: MessagesRequest) -> dict:
    if finish.reason == "tool_calls":
        return {"stop_reason": "tool_use", "stop_sequence": None}
    if finish.reason == "length":
        return {"stop_reason": "max_tokens", "stop_sequence": None}
    if isinstance(finish.stop_reason, str) and finish.stop_reason in (req.stop_sequences or []):
        return {"stop_reason": "stop_sequence", "stop_sequence": finish.stop_reason}
    return {"stop_reason": "end_turn", "stop_sequence": None}


def _usage(finish: Finish) -> dict:
    """Anthropic counts prompt tokens read from the (prefix) cache apart from the others."""
    u = finish.usage
    cached = u["prompt_tokens_details"]["cached_tokens"]
    return {
        "input_tokens": u["prompt_tokens"] - cached,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
        "output_tokens": u["completion_tokens"],
        "output_tokens_details": {"thinking_tokens": u["completion_tokens_details"]["reasoning_tokens"]},
    }


# ---- streaming ----------------------------------------------------------------------------


def _event(kind: str, **fields) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields}, ensure_ascii=False)}\n\n"


async def stream_message(turn: Turn, req: MessagesRequest, model: str):
    start = {
        **_message(turn.id, model, []),
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": len(turn.chat.prompt), "output_tokens": 0},
    }
    yield _event("message_start", message=start)
    index, thinking = -1, ""
    try:
        async for step, event in blocks(turn):
            if step == "start":
                index += 1
                yield _event("content_block_start", index=index, content_block=_empty_block(event))
            elif step == "delta":
                if isinstance(event, Reasoning):
                    thinking += event.text
                if isinstance(event, ToolCall) and not event.arguments:
                    continue
                yield _event("content_block_delta", index=index, delta=_delta(event))
            elif step == "stop":
                if thinking:
                    signature = {"type": "signature_delta", "signature": _signature(thinking)}
                    yield _event("content_block_delta", index=index, delta=signature)
                    thinking = ""
                yield _event("content_block_stop", index=index)
            else:
                if event.error:
                    yield _event("error", error={"type": "api_error", "message": event.error})
                    return
                yield _event("message_delta", delta=_stop(event, req), usage=_usage(event))
                yield _event("message_stop")
    except Exception as e:  # an engine fault mid-stream: tell the client, close cleanly
        yield _event("error", error={"type": "api_error", "message": f"{type(e).__name__}: {e}"})


def _empty_block(event) -> dict:
    if isinstance(event, Reasoning):
        return {"type": "thinking", "thinking": "", "signature": ""}
    if isinstance(event, Text):
        return {"type": "text", "text": ""}
    return _tool_use_block(event, arguments="")


def _delta(event) -> dict:
    if isinstance(event, Reasoning):
        return {"type": "thinking_delta", "thinking": event.text}
    if isinstance(event, Text):
        return {"type": "text_delta", "text": event.text}
    text = event.arguments if isinstance(event, ToolCall) else event.text
    return {"type": "input_json_delta", "partial_json": text}
