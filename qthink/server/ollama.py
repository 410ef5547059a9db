"""Ollama's API (/api/chat, /api/generate, /api/tags, /api/show, /api/version, /api/ps), translated
onto the chat path; streams are newline-delimited JSON, as Ollama's clients read them."""

import json
import time
import uuid
from datetime import UTC, datetime
from typing import cast

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from qthink import __version__
from qthink.server.chat import render_prompt
from qthink.server.errors import APIError
from qthink.server.protocol import ChatCompletionRequest
from qthink.server.streaming import event_stream, request_id_header
from qthink.server.turn import (
    Finish,
    Reasoning,
    Text,
    ToolArguments,
    ToolCall,
    arguments_object,
    chat_completion_request,
    events,
    start_turn,
    translation,
    whole_turn,
)

# The Ollama API version whose fields this layer serves (clients compare it to gate features).
OLLAMA_API_VERSION = "0.12.0"
THINK_LEVELS = ("low", "medium", "high")


class Options(BaseModel):
    """Ollama's sampling options that qthink has; any other option is refused by name."""

    model_config = ConfigDict(extra="forbid")
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    num_predict: int | None = None  # -1: no limit but the context
    seed: int | None = None
    stop: list[str] | None = None
    num_ctx: int | None = Field(default=None, ge=1)  # a smaller context than the server's is honoured
    repeat_penalty: float | None = Field(default=None, gt=0)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)


class OllamaMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: str | None = ""
    thinking: str | None = None
    tool_calls: list[dict] | None = None
    tool_name: str | None = None
    images: list[str] | None = None


class GenerateFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    think: bool | str | None = None
    format: str | dict | None = None
    options: Options | None = None
    stream: bool = True  # Ollama streams unless told not to
    keep_alive: str | int | None = None  # the model stays loaded for the server's life


class ChatRequest(GenerateFields):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[dict] | None = None


class GenerateRequest(GenerateFields):
    prompt: str = ""
    system: str | None = None
    images: list[str] | None = None
    raw: bool = False


class ShowRequest(BaseModel):
    model: str | None = None
    name: str | None = None  # older clients
    verbose: bool = False


def add_ollama_routes(app: FastAPI, server) -> None:
    loaded_at = _now()  # the model's "modified" time: when this server loaded it

    @app.post("/api/chat")
    async def chat(req: ChatRequest, request: Request):
        _check_model(server, req.model)
        if not req.messages:  # Ollama's "load the model": it is loaded already
            return _loaded(req.model, {"message": {"role": "assistant", "content": ""}})
        messages = [_chat_message(m, i) for i, m in enumerate(req.messages)]
        return await _respond(req, server, request, messages, req.tools, "chat")

    @app.post("/api/generate")
    async def generate(req: GenerateRequest, request: Request):
        _check_model(server, req.model)
        if req.raw or req.images:
            raise APIError(400, "raw prompts and images are not supported here; use /api/chat")
        if not req.prompt:  # Ollama's "load the model": it is loaded already
            return _loaded(req.model, {"response": ""})
        messages = ([{"role": "system", "content": req.system}] if req.system else []) + [
            {"role": "user", "content": req.prompt}
        ]
        return await _respond(req, server, request, messages, None, "generate")

    @app.get("/api/version")
    async def version():
        return {"version": OLLAMA_API_VERSION, "qthink": __version__}

    @app.get("/api/tags")
    async def tags():
        return {"models": [_model_card(server, loaded_at)]}

    @app.get("/api/ps")
    async def ps():
        card = _model_card(server, loaded_at)
        card.update(
            expires_at="9999-12-31T23:59:59Z", size_vram=0, context_length=server.engine.max_model_len
        )
        return {"models": [card]}

    @app.post("/api/show")
    async def show(req: ShowRequest):
        _check_model(server, req.model or req.name)
        config = server.engine.model_config
        return {
            "modelfile": "",
            "parameters": "",
            "template": "",
            "details": _details(server),
            "model_info": {
                "general.architecture": "qwen3",
                "qwen3.context_length": server.engine.max_model_len,
                "qwen3.embedding_length": config.hidden_size,
                "qwen3.block_count": config.num_hidden_layers,
                "qwen3.attention.head_count": config.num_attention_heads,
                "qwen3.attention.head_count_kv": config.num_key_value_heads,
            },
            "capabilities": ["completion", "tools", "thinking"],
            "modified_at": loaded_at,
        }


def _loaded(model: str, body: dict) -> dict:
    return {"model": model, "created_at": _now(), **body, "done": True, "done_reason": "load"}


def _tag(server) -> str:
    name = server.model_name
    return name if ":" in name else f"{name}:latest"


def _check_model(server, model: str | None) -> None:
    names = server.served_names or (server.model_name,)
    if model not in names and (model or "").removesuffix(":latest") not in names:
        raise APIError(
            404, f"model {model!r} not found; this server serves {_tag(server)!r}", code="model_not_found"
        )


def _details(server) -> dict:
    return {
        "parent_model": "",
        "format": "safetensors",
        "family": "qwen3",
        "families": ["qwen3"],
        "parameter_size": "",
        "quantization_level": (server.engine.engine.quantization or "none").upper(),
    }


def _model_card(server, loaded_at: str) -> dict:
    return {
        "name": _tag(server),
        "model": _tag(server),
        "modified_at": loaded_at,
        "size": 0,
        "digest": "",
        "details": _details(server),
    }


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# ---- request translation ------------------------------------------------------------------


@translation
def _chat_message(m: OllamaMessage, i: int) -> dict:
    if m.images:
        raise APIError(400, f"messages[{i}].images: images are not supported by this model")
    if m.role not in ("system", "user", "assistant", "tool"):
        raise APIError(400, f"messages[{i}].role must be system, user, assistant or tool")
    message: dict = {"role": m.role, "content": m.content}
    if m.thinking:
        message["reasoning_content"] = m.thinking
    if m.tool_calls:
        message["tool_calls"] = [_history_call(c) for c in m.tool_calls]
    if m.tool_name:
        message["name"] = m.tool_name
    return message


def _history_call(call: dict) -> dict:
    function = call.get("function") or {}
    arguments = function.get("arguments") or {}
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {
        "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": function.get("name"), "arguments": arguments},
    }


@translation
def chat_request(
    req: GenerateFields, messages: list[dict], tools: list[dict] | None, efforts
) -> ChatCompletionRequest:
    o = req.options or Options()
    budget, kwargs = None, {}
    if req.think is False:
        kwargs = {"enable_thinking": False}
    elif isinstance(req.think, str):
        if req.think not in THINK_LEVELS:
            raise APIError(400, f"think must be true, false, low, medium or high, got {req.think!r}")
        budget = efforts.tokens(req.think, "think")
    return chat_completion_request(
        messages=messages,
        tools=tools,
        response_format=_format(req.format),
        temperature=o.temperature,
        top_p=o.top_p,
        top_k=o.top_k,
        min_p=o.min_p or 0.0,
        seed=o.seed,
        stop=o.stop,
        max_tokens=o.num_predict if o.num_predict and o.num_predict > 0 else None,
        repetition_penalty=o.repeat_penalty or 1.0,
        presence_penalty=o.presence_penalty or 0.0,
        frequency_penalty=o.frequency_penalty or 0.0,
        max_thinking_tokens=budget,
        chat_template_kwargs=kwargs,
    )


def _format(fmt: str | dict | None) -> dict | None:
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"schema": fmt}}
    raise APIError(400, f'format must be "json" or a JSON schema, got {fmt!r}')


def _fit_context(chat: ChatCompletionRequest, num_ctx: int | None, prompt_len: int) -> None:
    """Ollama's num_ctx as a smaller context: the prompt and the output must fit in it."""
    if num_ctx is None:
        return
    room = num_ctx - prompt_len
    if room <= 0:
        raise APIError(400, f"the prompt has {prompt_len} tokens, more than num_ctx={num_ctx}")
    chat.max_tokens = min(chat.max_tokens or room, room)


# ---- responses ----------------------------------------------------------------------------


async def _respond(req: GenerateFields, server, request: Request, messages, tools, kind: str):
    chat = chat_request(req, messages, tools, server.efforts)
    if req.options and req.options.num_ctx:
        _, prompt = await render_prompt(chat, server)
        _fit_context(chat, req.options.num_ctx, len(prompt))
    request_id = f"ollama-{uuid.uuid4().hex}"
    started = time.monotonic()
    turn = await start_turn(chat, server, request_id)
    shape = _Shape(req.model, kind, started)
    if req.stream:
        return event_stream(
            _stream(turn, shape), request_id, media_type="application/x-ndjson", streams=[turn.outputs]
        )
    whole = await whole_turn(turn, request)
    body = shape.chunk(whole.text or "", whole.reasoning, whole.calls)
    finish = cast(Finish, whole.finish)  # the turn ran to its Finish
    return request_id_header({**body, **shape.done(finish, turn)}, request_id)


_DONE_REASONS: dict[str | None, str] = {"length": "length", "tool_calls": "stop"}


class _Shape:
    """Ollama's chat or generate objects: a partial chunk, and the closing fields."""

    def __init__(self, model: str, kind: str, started: float):
        self.model, self.kind, self.started = model, kind, started
        self.calls = 0  # tool calls sent so far: each has its index

    def chunk(self, text: str, thinking: str | None, calls: list[ToolCall]) -> dict:
        body: dict = {"model": self.model, "created_at": _now()}
        if self.kind == "generate":
            body["response"] = text
            if thinking:
                body["thinking"] = thinking
        else:
            message: dict = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = [_ollama_call(c, self.calls + i) for i, c in enumerate(calls)]
                self.calls += len(calls)
            body["message"] = message
        return {**body, "done": False}

    def done(self, finish: Finish, turn) -> dict:
        """The closing fields; durations in nanoseconds, from the engine's own clock."""
        now = finish.timing.get("now") or time.monotonic()
        arrival = finish.timing.get("arrival") or self.started
        first = finish.timing.get("first_token") or now
        u = finish.usage
        return {
            "done": True,
            "done_reason": _DONE_REASONS.get(finish.reason, "stop"),
            "total_duration": int((time.monotonic() - self.started) * 1e9),
            "load_duration": 0,
            "prompt_eval_count": u["prompt_tokens"],
            "prompt_eval_duration": int((first - arrival) * 1e9),
            "eval_count": u["completion_tokens"],
            "eval_duration": int((now - first) * 1e9),
            "thinking_budget": turn.chat.plan.metadata(finish.thinking_cut_by)
            if turn.chat.plan.asked
            else None,
        }


def _ollama_call(call: ToolCall, index: int) -> dict:
    return {
        "id": call.id,
        "function": {"index": index, "name": call.name, "arguments": arguments_object(call.arguments)},
    }


async def _stream(turn, shape: _Shape):
    call: ToolCall | None = None  # Ollama sends each call whole, with its arguments as an object
    try:
        async for e in events(turn):
            if isinstance(e, ToolArguments):
                cast(ToolCall, call).arguments += e.text  # arguments follow their call
                continue
            if call is not None:
                yield json.dumps(shape.chunk("", None, [call])) + "\n"
                call = None
            if isinstance(e, ToolCall):
                call = ToolCall(e.id, e.name, e.arguments)
            elif isinstance(e, Finish):
                if e.error:
                    yield json.dumps({"error": e.error}) + "\n"
                    return
                yield json.dumps({**shape.chunk("", None, []), **shape.done(e, turn)}) + "\n"
            elif isinstance(e, Reasoning):
                yield json.dumps(shape.chunk("", e.text, [])) + "\n"
            elif isinstance(e, Text):
                yield json.dumps(shape.chunk(e.text, None, [])) + "\n"
    except Exception as e:  # an engine fault mid-stream: tell the client, close cleanly
        yield json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n"
