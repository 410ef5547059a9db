"""The agent's model: an OpenAI-compatible endpoint through the `openai` client, or the engine in-process."""

import itertools
from collections.abc import Iterator
from dataclasses import fields
from typing import Any, cast

from openai import OpenAI, Stream
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

# Qwen-Agent generate_cfg keys that shape its own prompting; qthink's server does that itself.
_QWEN_AGENT_ONLY = {
    "fncall_prompt_type",
    "thought_in_content",
    "function_choice",
    "max_retries",
    "use_raw_api",
}
_OPENAI_ARGS = {
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "parallel_tool_calls",
    "tool_choice",
    "logprobs",
    "top_logprobs",
    "n",
}
# The model card's sampling; max_tokens left unset runs up to the context limit.
LOCAL_DEFAULTS = {"temperature": 0.6, "top_p": 0.95, "top_k": 20}


def make_chat_model(llm_cfg: dict) -> "OpenAIChat | LocalChat":
    """The backend named by `model_server`: 'local' runs the engine here, anything else is a URL."""
    if llm_cfg.get("model_server") == "local":
        return LocalChat(llm_cfg)
    return OpenAIChat(llm_cfg)


class OpenAIChat:
    """Chat completions with tools, streamed; `reasoning_content` read from the message/deltas."""

    def __init__(self, llm_cfg: dict):
        servers = llm_cfg.get("model_server") or "http://127.0.0.1:8000/v1"
        urls = [servers] if isinstance(servers, str) else list(servers)
        key = llm_cfg.get("api_key") or "EMPTY"
        # Several endpoints (data parallelism): each model call goes to the next, in turn.
        self.clients = [OpenAI(base_url=url, api_key=key) for url in urls]
        self._turn = itertools.count()
        self.client = self.clients[0]
        self.model = llm_cfg.get("model") or self._served_model()
        self.request_args = _request_args(llm_cfg.get("generate_cfg") or {})

    def stream(self, messages: list[dict], tools: list[dict] | None) -> Iterator[dict]:
        """Yield the assistant message as it grows; the last one is complete."""
        args = dict(self.request_args, tools=tools) if tools else dict(self.request_args)
        if not tools:
            args.pop("tool_choice", None)
            args.pop("parallel_tool_calls", None)
        client = self.clients[next(self._turn) % len(self.clients)]
        stream = cast(
            Stream[ChatCompletionChunk],
            client.chat.completions.create(
                model=self.model,
                messages=cast(list[ChatCompletionMessageParam], messages),
                stream=True,
                **args,
            ),
        )
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        calls: dict[int, dict] = {}
        for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            reasoning = _extra(delta, "reasoning_content") or _extra(delta, "reasoning")
            if reasoning:
                message["reasoning_content"] = message.get("reasoning_content", "") + reasoning
            if delta.content:
                message["content"] += delta.content
            for call_delta in delta.tool_calls or []:
                _merge_call(calls, call_delta)
            if calls:
                message["tool_calls"] = [calls[i] for i in sorted(calls)]
            yield dict(message)

    def _served_model(self) -> str:
        return self.client.models.list().data[0].id


class LocalChat:
    """`qthink.engine.offline.LLM` in this process: whole answers, tool calls parsed from the content."""

    def __init__(self, llm_cfg: dict):
        from qthink.engine.offline import LLM
        from qthink.engine.sampling_params import SamplingParams

        if not llm_cfg.get("model"):
            raise ValueError("model_server 'local' needs a model: a checkpoint folder or hub id")
        self.llm = LLM(model=llm_cfg["model"])
        cfg = dict(LOCAL_DEFAULTS, **(llm_cfg.get("generate_cfg") or {}))
        known = {f.name for f in fields(SamplingParams)}
        self.params = SamplingParams(**{k: v for k, v in cfg.items() if k in known})

    def stream(self, messages: list[dict], tools: list[dict] | None) -> Iterator[dict]:
        from qthink.parsing.tool_calls import parse_tool_calls

        out = self.llm.chat(messages, self.params, tools=tools)[0].outputs[0]
        content, calls = parse_tool_calls(out.content, tools)
        message: dict[str, Any] = {"role": "assistant", "content": content or ""}
        if out.reasoning_content:
            message["reasoning_content"] = out.reasoning_content
        if calls:
            message["tool_calls"] = calls
        yield message


def _request_args(generate_cfg: dict) -> dict:
    """Split generate_cfg into the client's named arguments and `extra_body` (top_k, min_p, ...)."""
    args, extra = {}, dict(generate_cfg.get("extra_body") or {})
    for key, value in generate_cfg.items():
        if key in _OPENAI_ARGS:
            args[key] = value
        elif key not in _QWEN_AGENT_ONLY and key != "extra_body":
            extra[key] = value
    if extra:
        args["extra_body"] = extra
    return args


def _extra(delta, name: str):
    value = getattr(delta, name, None)
    if value is None and delta.model_extra:
        value = delta.model_extra.get(name)
    return value


def _merge_call(calls: dict, delta) -> None:
    """Accumulate one streamed tool-call delta (id and name come first, arguments in pieces)."""
    call = calls.setdefault(
        delta.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if delta.id:
        call["id"] = delta.id
    if delta.function is not None:
        call["function"]["name"] += delta.function.name or ""
        call["function"]["arguments"] += delta.function.arguments or ""
