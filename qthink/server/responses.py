"""POST /v1/responses (OpenAI Responses API): a translation onto the chat request and its events."""

import json
import time
import uuid
from collections import OrderedDict
from typing import Any, Literal, cast

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from qthink.server.errors import APIError
from qthink.server.protocol import ChatCompletionRequest
from qthink.server.streaming import event_stream, request_id_header
from qthink.server.turn import (
    Finish,
    Reasoning,
    Text,
    ToolCall,
    Turn,
    blocks,
    chat_completion_request,
    check_model,
    start_turn,
    translation,
    whole_turn,
)

# Stored responses (store=true, the default) kept for previous_response_id, oldest dropped first.
RESPONSE_STORE_SIZE = 1024


class ResponsesRequest(BaseModel):
    """The fields this server reads; any other field is refused by name."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    input: str | list[dict]
    instructions: str | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool = True
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    reasoning: dict | None = None
    text: dict | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    include: list[Literal["reasoning.encrypted_content"]] | None = None  # thinking is sent in the clear
    truncation: Literal["disabled"] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    stream_options: dict | None = None
    client_metadata: dict | None = None  # Codex CLI's session ids: metadata, not instructions
    max_thinking_tokens: int | None = Field(None, ge=0)  # qthink: the thinking budget in tokens


class ResponseStore:
    """Conversations of stored responses (as chat messages), for previous_response_id: an
    in-memory LRU of RESPONSE_STORE_SIZE entries, lost when the server stops."""

    def __init__(self, size: int = RESPONSE_STORE_SIZE):
        self.size = size
        self.items: OrderedDict[str, tuple[dict, list[dict]]] = OrderedDict()

    def put(self, response: dict, conversation: list[dict]) -> None:
        self.items[response["id"]] = (response, conversation)
        self.items.move_to_end(response["id"])
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def get(self, response_id: str, param: str | None = None) -> tuple[dict, list[dict]]:
        if response_id not in self.items:
            raise APIError(
                404 if param is None else 400,
                f"no stored response with id {response_id!r} (kept: the last {self.size} with store=true)",
                param=param,
                code="response_not_found",
            )
        self.items.move_to_end(response_id)
        return self.items[response_id]

    def delete(self, response_id: str) -> None:
        self.get(response_id)
        del self.items[response_id]


def add_responses_routes(app: FastAPI, server) -> None:
    @app.post("/v1/responses")
    async def create(req: ResponsesRequest, request: Request):
        check_model(server, req.model)
        return await create_response(req, server, request)

    @app.get("/v1/responses/{response_id}")
    async def retrieve(response_id: str):
        return server.responses.get(response_id)[0]

    @app.delete("/v1/responses/{response_id}")
    async def delete(response_id: str):
        server.responses.delete(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}


async def create_response(req: ResponsesRequest, server, request: Request):
    history = []
    if req.previous_response_id:
        history = server.responses.get(req.previous_response_id, "previous_response_id")[1]
    conversation = history + input_messages(req.input)
    chat = chat_request(req, conversation, server.efforts)
    response = ResponseShape(req, server.model_name)
    turn = await start_turn(chat, server, response.id)
    if req.stream:
        return event_stream(
            stream_response(turn, response, server, conversation), response.id, streams=[turn.outputs]
        )
    whole = await whole_turn(turn, request)
    for item in _reasoning_items(whole.reasoning) + _message_items(whole.text) + _call_items(whole.calls):
        response.add(item)
    body = response.finish(cast(Finish, whole.finish), turn)  # the turn ran to its Finish
    _store(server, req, body, conversation, response)
    return request_id_header(body, response.id)


# ---- request translation ------------------------------------------------------------------


@translation
def input_messages(value: str | list[dict]) -> list[dict]:
    """Responses input items as chat messages: a reasoning item goes with the assistant turn
    after it; consecutive function calls are one assistant turn's tool calls."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages: list[dict] = []
    reasoning = None
    for i, item in enumerate(value):
        kind = item.get("type", "message")
        where = f"input[{i}]"
        if kind == "message":
            renamed: dict[Any, Any] = {"developer": "system"}
            role = renamed.get(item.get("role"), item.get("role"))
            if role not in ("system", "user", "assistant"):
                raise APIError(400, f"{where}.role must be user, assistant, system or developer", param=where)
            message = {"role": role, "content": _text(item.get("content"), where + ".content")}
            if role == "assistant" and reasoning is not None:
                message["reasoning_content"], reasoning = reasoning, None
            messages.append(message)
        elif kind == "reasoning":
            parts = item.get("content") or item.get("summary") or []
            reasoning = "".join(p.get("text", "") for p in parts)
        elif kind == "function_call":
            call = {
                "id": _required(item, "call_id", where),
                "type": "function",
                "function": {
                    "name": _required(item, "name", where),
                    "arguments": item.get("arguments") or "{}",
                },
            }
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant" or reasoning is not None:
                last = {"role": "assistant", "content": None}
                if reasoning is not None:
                    last["reasoning_content"], reasoning = reasoning, None
                messages.append(last)
            last.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else _text(output, where + ".output")
            messages.append(
                {"role": "tool", "tool_call_id": _required(item, "call_id", where), "content": content}
            )
        else:
            raise APIError(400, f"{where}.type {kind!r} is not supported here", param=where)
    return messages


def _required(item: dict, key: str, where: str) -> str:
    if not isinstance(item.get(key), str):
        raise APIError(400, f"{where}.{key} is required", param=f"{where}.{key}")
    return item[key]


def _text(content, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") not in ("input_text", "output_text", "text", "refusal"):
            raise APIError(
                400, f"{where}: content of type {part.get('type')!r} is not supported", param=where
            )
        texts.append(part.get("text") or part.get("refusal") or "")
    return "".join(texts)


@translation
def chat_request(req: ResponsesRequest, messages: list[dict], efforts) -> ChatCompletionRequest:
    if req.instructions:
        messages = [{"role": "system", "content": req.instructions}] + messages
    budget, kwargs = req.max_thinking_tokens, {}
    effort = (req.reasoning or {}).get("effort")
    unknown = set(req.reasoning or {}) - {"effort", "summary", "generate_summary"}
    if unknown:
        raise APIError(400, f"reasoning.{sorted(unknown)[0]} is not supported", param="reasoning")
    if effort == "none":
        kwargs = {"enable_thinking": False}
    elif effort is not None and budget is None:
        budget = efforts.tokens(effort, "reasoning.effort")
    return chat_completion_request(
        messages=messages,
        tools=_tools(req.tools),
        tool_choice=_tool_choice(req.tool_choice),
        parallel_tool_calls=req.parallel_tool_calls,
        max_tokens=req.max_output_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        max_thinking_tokens=budget,
        chat_template_kwargs=kwargs,
        response_format=_response_format(req.text),
    )


def _tools(tools: list[dict] | None) -> list[dict] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise APIError(
                400,
                f"tools[{i}]: only function tools with a name are supported, got type {tool.get('type')!r}",
                param=f"tools[{i}]",
            )
        spec = {"name": tool["name"]}  # in the order Chat Completions clients send: the template prints it
        if tool.get("description"):
            spec["description"] = tool["description"]
        spec["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": spec})
    return out


def _tool_choice(choice: str | dict | None):
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not choice.get("name"):
            raise APIError(
                400, "tool_choice must be none, auto, required or a function by name", param="tool_choice"
            )
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def _response_format(text: dict | None) -> dict | None:
    fmt = (text or {}).get("format")
    unknown = set(text or {}) - {"format", "verbosity"}
    if unknown:
        raise APIError(400, f"text.{sorted(unknown)[0]} is not supported", param="text")
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": fmt.get("name"), "schema": fmt.get("schema")}}
    raise APIError(400, f"text.format type {fmt.get('type')!r} is not supported", param="text.format")


# ---- response objects ---------------------------------------------------------------------


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _reasoning_item(text: str, status: str = "completed") -> dict:
    content = [{"type": "reasoning_text", "text": text}] if status == "completed" else []
    return {"id": _item_id("rs"), "type": "reasoning", "summary": [], "content": content, "status": status}


def _reasoning_items(text: str | None) -> list[dict]:
    return [_reasoning_item(text)] if text else []


def _output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(text: str | None, status: str = "completed") -> dict:
    content = [_output_text(text)] if text is not None else []
    return {
        "id": _item_id("msg"),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def _message_items(text: str | None) -> list[dict]:
    return [_message_item(text)] if text else []


def _call_item(call: ToolCall, arguments: str | None = None, status: str = "completed") -> dict:
    return {
        "id": _item_id("fc"),
        "type": "function_call",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments if arguments is None else arguments,
        "status": status,
    }


def _call_items(calls: list[ToolCall]) -> list[dict]:
    return [_call_item(c) for c in calls]


class ResponseShape:
    """The response object, from in-progress to completed."""

    def __init__(self, req: ResponsesRequest, model: str):
        self.req, self.model = req, model
        self.id = _item_id("resp")
        self.created_at = int(time.time())
        self.output: list[dict] = []

    def add(self, item: dict) -> int:
        self.output.append(item)
        return len(self.output) - 1

    def body(self, status: str, output: list[dict] | None = None) -> dict:
        req = self.req
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self.model,
            "output": self.output if output is None else output,
            "error": None,
            "incomplete_details": None,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "tools": req.tools or [],
            "tool_choice": req.tool_choice or "auto",
            "parallel_tool_calls": req.parallel_tool_calls,
            "previous_response_id": req.previous_response_id,
            "reasoning": {"effort": (req.reasoning or {}).get("effort"), "summary": None},
            "text": req.text or {"format": {"type": "text"}},
            "truncation": "disabled",
            "store": req.store,
            "metadata": req.metadata or {},
            "usage": None,
        }

    def finish(self, finish: Finish, turn: Turn) -> dict:
        body = self.body("completed")
        if finish.reason == "length":
            body["status"] = "incomplete"
            body["incomplete_details"] = {"reason": "max_output_tokens"}
        elif finish.reason in ("abort", "error"):
            body["status"] = "failed" if finish.error else "incomplete"
        u = finish.usage
        body["usage"] = {
            "input_tokens": u["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": u["prompt_tokens_details"]["cached_tokens"]},
            "output_tokens": u["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": u["completion_tokens_details"]["reasoning_tokens"]},
            "total_tokens": u["total_tokens"],
        }
        body["thinking_budget"] = turn.chat.plan.metadata(finish.thinking_cut_by)
        return body


def _assistant_message(output: list[dict]) -> dict:
    """The response's output as the assistant turn of the stored conversation."""
    message: dict = {"role": "assistant", "content": None}
    for item in output:
        if item["type"] == "reasoning":
            message["reasoning_content"] = item["content"][0]["text"]
        elif item["type"] == "message":
            message["content"] = item["content"][0]["text"]
        elif item["type"] == "function_call":
            call = {"name": item["name"], "arguments": item["arguments"]}
            message.setdefault("tool_calls", []).append(
                {"id": item["call_id"], "type": "function", "function": call}
            )
    return message


def _store(server, req: ResponsesRequest, body: dict, conversation: list[dict], shape: ResponseShape) -> None:
    if req.store:
        server.responses.put(body, conversation + [_assistant_message(shape.output)])


# ---- streaming ----------------------------------------------------------------------------


class EventWriter:
    """Server-sent events numbered in order, each naming its type as the SDK's parser expects."""

    def __init__(self):
        self.sequence = 0

    def __call__(self, kind: str, **fields) -> str:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def stream_response(turn: Turn, shape: ResponseShape, server, conversation: list[dict]):
    emit = EventWriter()
    yield emit("response.created", response=shape.body("in_progress", []))
    yield emit("response.in_progress", response=shape.body("in_progress", []))
    item: _OpenItem | None = None
    try:
        async for step, event in blocks(turn):
            if step == "start":
                item = _OpenItem(_kind(event), shape)
                for chunk in item.open(emit, event):
                    yield chunk
            elif step == "delta":
                for chunk in cast(_OpenItem, item).delta(emit, event):  # opened by start
                    yield chunk
            elif step == "stop":
                for chunk in cast(_OpenItem, item).close(emit):
                    yield chunk
            else:
                body = shape.finish(event, turn)
                _store(server, shape.req, body, conversation, shape)
                kind = {"completed": "response.completed", "failed": "response.failed"}.get(
                    body["status"], "response.incomplete"
                )
                yield emit(kind, response=body)
    except Exception as e:  # an engine fault mid-stream: tell the client, close cleanly
        yield emit("error", code="server_error", message=f"{type(e).__name__}: {e}", param=None)


def _kind(event) -> str:
    return "reasoning" if isinstance(event, Reasoning) else "text" if isinstance(event, Text) else "call"


class _OpenItem:
    """One output item while it streams: added, its deltas, done."""

    def __init__(self, kind: str, shape: ResponseShape):
        self.kind, self.shape, self.text = kind, shape, ""

    def open(self, emit, event):
        if self.kind == "call":
            self.item = _call_item(event, arguments="", status="in_progress")
        elif self.kind == "reasoning":
            self.item = _reasoning_item("", status="in_progress")
        else:
            self.item = _message_item(None, status="in_progress")
        self.index = self.shape.add(self.item)
        yield emit("response.output_item.added", output_index=self.index, item=dict(self.item))
        if self.kind != "call":
            part = {"type": "reasoning_text", "text": ""} if self.kind == "reasoning" else _output_text("")
            yield emit("response.content_part.added", **self._where(), part=part)

    def _where(self) -> dict:
        where = {"item_id": self.item["id"], "output_index": self.index}
        return where if self.kind == "call" else {**where, "content_index": 0}

    def delta(self, emit, event):
        if self.kind == "call":
            text = event.arguments if isinstance(event, ToolCall) else event.text
            self.text += text
            if text:
                yield emit("response.function_call_arguments.delta", **self._where(), delta=text)
            return
        self.text += event.text
        if self.kind == "reasoning":
            yield emit("response.reasoning_text.delta", **self._where(), delta=event.text)
        else:
            yield emit("response.output_text.delta", **self._where(), delta=event.text, logprobs=[])

    def close(self, emit):
        if self.kind == "call":
            self.item.update(arguments=self.text, status="completed")
            yield emit(
                "response.function_call_arguments.done",
                **self._where(),
                name=self.item["name"],
                arguments=self.text,
            )
        elif self.kind == "reasoning":
            part = {"type": "reasoning_text", "text": self.text}
            yield emit("response.reasoning_text.done", **self._where(), text=self.text)
            yield emit("response.content_part.done", **self._where(), part=part)
            self.item.update(content=[part], status="completed")
        else:
            part = _output_text(self.text)
            yield emit("response.output_text.done", **self._where(), text=self.text, logprobs=[])
            yield emit("response.content_part.done", **self._where(), part=part)
            self.item.update(content=[part], status="completed")
        yield emit("response.output_item.done", output_index=self.index, item=self.item)
