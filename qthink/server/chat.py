"""POST /v1/chat/completions: the thinking as reasoning_content, the answer, tool calls, streaming."""

import time
import uuid
from dataclasses import dataclass
from typing import cast

from fastapi import Request

from qthink.engine.outputs import CompletionOutput, RequestOutput
from qthink.engine.sampling_params import SamplingParams
from qthink.parsing.text_stream import StrippedStream
from qthink.parsing.thinking import ThinkingFormat
from qthink.parsing.tool_calls import ToolCallStreamParser, parse_tool_calls
from qthink.server.errors import APIError
from qthink.server.params import sampling_params, structured_output, template_kwargs, tool_choice_spec
from qthink.server.protocol import ChatCompletionRequest
from qthink.server.streaming import (
    event_stream,
    last_output,
    request_id_header,
    sse,
    sse_done,
    stream_outputs,
    unless_disconnected,
)
from qthink.server.thinking_budget import ThinkingPlan, thinking_plan


@dataclass
class PreparedChat:
    """A chat request turned into what the engine runs, and what its answer is parsed with."""

    prompt: list[int]
    params: SamplingParams
    parse_tools: bool
    format: ThinkingFormat
    thinking: bool  # the prompt opens <think>
    plan: ThinkingPlan


async def render_prompt(req: ChatCompletionRequest, server) -> tuple[ThinkingPlan, list[int]]:
    """The request's thinking plan and prompt tokens (the template told when thinking is off)."""
    plan, kwargs = thinking_plan(
        req, server.efforts, template_kwargs(req.chat_template_kwargs, server.default_template_kwargs)
    )
    messages = [m.for_template() for m in req.messages]
    prompt = await server.prompts.chat(
        messages, req.tools, add_generation_prompt=req.add_generation_prompt, **kwargs
    )
    return plan, prompt


async def prepare_chat(req: ChatCompletionRequest, server, fit_max_tokens: bool = False) -> PreparedChat:
    """The one path from a chat request to a prompt and SamplingParams; every API's
    request is translated into a ChatCompletionRequest and comes through here.
    `fit_max_tokens`: a max_tokens past the context is a cap, lowered to what fits."""
    parse_tools, forced = tool_choice_spec(req, server.tokenizer)
    structured = structured_output(req)
    if forced and structured:
        raise APIError(400, "tool_choice required/named cannot be combined with response_format")
    plan, prompt = await render_prompt(req, server)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    params = sampling_params(req, logprobs, forced or structured)
    fmt = server.engine.thinking_format
    thinking = fmt.prompt_opens_thinking(prompt)
    if plan.disabled and thinking:  # a model that always thinks: close its thinking at once
        plan.max_thinking_tokens, plan.forced_closed = 0, True
    params.max_thinking_tokens = plan.max_thinking_tokens
    room = server.engine.max_model_len - len(prompt)
    if fit_max_tokens and params.max_tokens is not None and params.max_tokens > room > 0:
        params.max_tokens = room
    return PreparedChat(prompt, params, parse_tools, fmt, thinking, plan)


async def create_chat_completion(req: ChatCompletionRequest, server, request: Request):
    chat = await prepare_chat(req, server)
    view = ChatView(
        req, server.reported_name(req.model), chat.format, chat.thinking, chat.parse_tools, chat.plan
    )
    outputs = await stream_outputs(
        server, chat.prompt, chat.params, request_id=view.id, prompt_param="messages"
    )
    if req.stream:
        return event_stream(view.stream(outputs), view.id, streams=[outputs])
    final = await unless_disconnected(request, last_output(outputs))
    return request_id_header(view.response(final), view.id)


class ChatView:
    """Shapes engine outputs into chat completion objects and stream chunks."""

    def __init__(
        self,
        req: ChatCompletionRequest,
        model: str,
        fmt: ThinkingFormat,
        thinking: bool,
        parse_tools: bool,
        plan: ThinkingPlan | None = None,
    ):
        self.req, self.model, self.format, self.thinking = req, model, fmt, thinking
        self.plan = plan or ThinkingPlan()
        self.tools = req.tools if parse_tools else None
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    # ---- whole response -----------------------------------------------------------------

    def response(self, out: RequestOutput) -> dict:
        choices = [self._choice(c) for c in out.outputs]
        body = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage(out, self.format, self.thinking),
        }
        if self.plan.asked:
            body["thinking_budget"] = self.plan.metadata(out.outputs[0].thinking_cut_by)
        return body

    def _choice(self, c: CompletionOutput) -> dict:
        reasoning, content = c.reasoning_content, c.content
        message: dict = {"role": "assistant"}
        calls: list[dict] = []
        if self.tools:
            content, calls = parse_tool_calls(content, self.tools)
        if self.req.include_reasoning:  # null rather than absent: clients read the attribute
            message["reasoning_content"] = message["reasoning"] = reasoning
        message["content"] = content
        if calls:
            message["tool_calls"] = calls
        return {
            "index": c.index,
            "message": message,
            "logprobs": self._logprobs(c, 0, len(c.token_ids)),
            "finish_reason": "tool_calls" if calls else finish_reason(c),
            "stop_reason": c.stop_reason,
        }

    def _logprobs(self, c: CompletionOutput, start: int, end: int) -> dict | None:
        if not self.req.logprobs or c.logprobs is None:
            return None
        k = self.req.top_logprobs or 0
        content = []
        for token, entry in zip(c.token_ids[start:end], c.logprobs[start:end]):
            chosen = entry[token]
            top = sorted(
                (e for e in entry.values() if e.rank is not None and e.rank <= k),
                key=lambda e: cast(int, e.rank),
            )
            content.append({**_token_logprob(chosen), "top_logprobs": [_token_logprob(e) for e in top]})
        return {"content": content}

    # ---- stream ---------------------------------------------------------------------------

    async def stream(self, outputs):
        states: dict[int, ChoiceStream] = {}
        last = None
        try:
            async for out in outputs:
                last = out
                for c in out.outputs:
                    state = states.setdefault(c.index, ChoiceStream(self))
                    for chunk in state.advance(c):
                        yield sse(self._chunk(c.index, *chunk))
            if last is not None and last.error:
                yield sse({"error": {"message": last.error, "type": "server_error", "code": 500}})
            elif last is not None and self.req.stream_options and self.req.stream_options.include_usage:
                totals = usage(last, self.format, self.thinking)
                yield sse({**self._envelope(), "choices": [], "usage": totals})
            yield sse_done()
        except Exception as e:  # an engine fault mid-stream: tell the client, close cleanly
            yield sse({"error": {"message": f"{type(e).__name__}: {e}", "type": "server_error", "code": 500}})
            yield sse_done()

    def _envelope(self) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }

    def _chunk(self, index: int, delta: dict, logprobs, finish: str | None, stop_reason=None) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        if finish is not None:
            choice["stop_reason"] = stop_reason
        return {**self._envelope(), "choices": [choice]}


class ChoiceStream:
    """One choice's progress through a stream: text and tokens seen, the two parsers."""

    def __init__(self, view: ChatView):
        self.view = view
        self.reasoning = view.format.stream(view.thinking)
        self.tools = ToolCallStreamParser(view.tools) if view.tools else None
        self.content = StrippedStream() if view.tools else None  # as the whole parse strips it
        self.text_seen = 0
        self.tokens_seen = 0
        self.started = False
        self.made_calls = False

    def advance(self, c: CompletionOutput):
        """Chunks (delta, logprobs, finish_reason[, stop_reason]) for what is new in `c`."""
        new_text = c.text[self.text_seen :]
        self.text_seen = len(c.text)
        logprobs = self.view._logprobs(c, self.tokens_seen, len(c.token_ids))
        self.tokens_seen = len(c.token_ids)
        if not self.started:
            self.started = True
            yield {"role": "assistant", "content": ""}, None, None
        final = c.finish_reason is not None
        r_delta, c_delta = self.reasoning.feed(new_text, final=final)
        deltas = coalesce(self._content_deltas(c_delta, final=final)) or [{}]
        if r_delta and self.view.req.include_reasoning:
            deltas[0] = {"reasoning_content": r_delta, "reasoning": r_delta, **deltas[0]}
        self.made_calls = self.made_calls or any("tool_calls" in d for d in deltas)
        for i, delta in enumerate(deltas):
            chunk_logprobs = logprobs if i == 0 else None
            if delta or chunk_logprobs:
                yield delta, chunk_logprobs, None
        if c.finish_reason is not None:
            yield {}, None, "tool_calls" if self.made_calls else finish_reason(c), c.stop_reason

    def _content_deltas(self, text: str, final: bool) -> list[dict]:
        if self.tools is None:
            return [{"content": text}] if text else []
        out = []
        for d in self.tools.feed(text, final=final):
            if "content" in d:
                trimmed = cast(StrippedStream, self.content).push(d["content"])  # tools set it
                if trimmed:
                    out.append({"content": trimmed})
            else:
                out.append(d)
        return out


def coalesce(deltas: list[dict]) -> list[dict]:
    """Parser deltas as stream chunk deltas: each chunk holds content, then the tool-call
    entries that follow it, one entry per call (its announcement and argument text joined);
    content after a call starts the next chunk, so the order is kept."""
    chunks: list[dict] = []
    for d in deltas:
        if "content" in d:
            if not chunks or "tool_calls" in chunks[-1]:
                chunks.append({"content": ""})
            chunks[-1]["content"] += d["content"]
            continue
        if not chunks:
            chunks.append({})
        entries = chunks[-1].setdefault("tool_calls", [])
        call = d["tool_call"]
        same = next((e for e in entries if e["index"] == call["index"]), None)
        if same is None:
            entries.append({**call, "function": dict(call["function"])})
        else:
            same["function"]["arguments"] += call["function"]["arguments"]
    return chunks


def finish_reason(c: CompletionOutput) -> str | None:
    renamed: dict[str | None, str | None] = {"abort": "abort", "error": "error"}
    return renamed.get(c.finish_reason, c.finish_reason)


def usage(out: RequestOutput, fmt: ThinkingFormat, thinking: bool) -> dict:
    completion = sum(len(c.token_ids) for c in out.outputs)
    prompt = len(out.prompt_token_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {
            "reasoning_tokens": sum(fmt.reasoning_tokens(c.token_ids, thinking) for c in out.outputs)
        },
        "prompt_tokens_details": {"cached_tokens": out.num_cached_tokens},
    }


def _token_logprob(entry) -> dict:
    token = entry.decoded_token or ""
    return {"token": token, "logprob": max(entry.logprob, -9999.0), "bytes": list(token.encode())}
