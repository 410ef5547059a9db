"""From an OpenAI request to SamplingParams: limits, thinking budget, structured output, tool choice."""

import json
from typing import Any

from qthink.engine.sampling_params import SamplingParams
from qthink.engine.structured import StructuredOutputError, check_spec, tool_call_grammar
from qthink.parsing.tool_calls import END as TOOL_CALL_END
from qthink.parsing.tool_calls import START as TOOL_CALL_START
from qthink.server.errors import APIError
from qthink.server.protocol import ChatCompletionRequest, SamplingFields


def sampling_params(req: SamplingFields, logprobs: int | None, structured: dict | None) -> SamplingParams:
    """The request's sampling fields; the engine checks them against the prompt and the context."""
    return SamplingParams(
        n=req.n,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty,
        seed=req.seed,
        max_tokens=getattr(req, "max_completion_tokens", None) or req.max_tokens,
        min_tokens=req.min_tokens,
        stop=[req.stop] if isinstance(req.stop, str) else req.stop or [],
        stop_token_ids=req.stop_token_ids or [],
        include_stop_str_in_output=req.include_stop_str_in_output,
        ignore_eos=req.ignore_eos,
        logprobs=logprobs,
        skip_special_tokens=req.skip_special_tokens,
        max_thinking_tokens=req.max_thinking_tokens
        if req.max_thinking_tokens is not None
        else req.thinking_token_budget,
        structured_output=structured,
        loop_guard=req.loop_guard,
    )


def structured_output(req: SamplingFields) -> dict | None:
    """vLLM's guided_* extras and OpenAI's response_format, as one structured_output spec;
    one of the wrong shape or over the size limits is refused here, naming its field."""
    specs: list[tuple[str, dict[str, Any]]] = []
    fmt = req.response_format
    if fmt is not None:
        kind = fmt.get("type")
        if kind == "json_object":
            specs.append(("response_format", {"json_object": True}))
        elif kind == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            if not isinstance(schema, dict):
                raise APIError(
                    400,
                    "response_format.json_schema.schema must be a JSON Schema object",
                    param="response_format",
                )
            specs.append(("response_format", {"json_schema": schema}))
        elif kind not in ("text", None):
            raise APIError(400, f"unknown response_format type {kind!r}", param="response_format")
    if req.guided_json is not None:
        schema = req.guided_json
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except (json.JSONDecodeError, RecursionError):
                raise APIError(400, "guided_json is not valid JSON", param="guided_json") from None
        specs.append(("guided_json", {"json_schema": schema}))
    for key, value in (
        ("choice", req.guided_choice),
        ("regex", req.guided_regex),
        ("grammar", req.guided_grammar),
    ):
        if value is not None:
            specs.append((f"guided_{key}", {key: value}))
    if len(specs) > 1:
        raise APIError(400, "give at most one of response_format and the guided_* fields")
    if not specs:
        return None
    field, spec = specs[0]
    checked(spec, field)
    return spec


def checked(spec: dict, field: str) -> dict:
    """`spec` after the size and shape checks, which name `field` when they refuse it."""
    try:
        check_spec(spec, field)
    except StructuredOutputError as e:
        raise APIError(400, e.message, param=field, code=e.code) from None
    return spec


def tool_choice_spec(req: ChatCompletionRequest, vocab) -> tuple[bool, dict | None]:
    """(parse tool calls?, grammar forcing them). `none` never parses; `required` and a named
    function constrain the answer to calls, so they are well-formed. `vocab` maps a token's
    text to its id (the tokenizer)."""
    choice = req.tool_choice
    if choice in (None, "auto", "none"):
        return bool(req.tools) and choice != "none", None
    named = isinstance(choice, dict) and (choice.get("function") or {}).get("name")
    if choice != "required" and not named:
        raise APIError(
            400,
            f"tool_choice must be none, auto, required or a named function, got {choice!r}",
            param="tool_choice",
        )
    if not req.tools:
        raise APIError(400, f"tool_choice {choice!r} needs `tools`", param="tool_choice")
    markers = (vocab.token_to_id(TOOL_CALL_START), vocab.token_to_id(TOOL_CALL_END))
    if None in markers:
        raise APIError(400, f"this model's vocabulary has no {TOOL_CALL_START} token to force calls with")
    grammar = tool_call_grammar(req.tools, markers, named or None, req.parallel_tool_calls)
    return True, checked({"grammar": grammar}, "tools")


# Keys a client must not set through chat_template_kwargs: they would switch off protections
# (special-token text in content) or replace what the server controls.
RESERVED_TEMPLATE_KWARGS = {
    "allow_special_tokens_in_content",
    "chat_template",
    "tokenize",
    "tools",
    "messages",
    "add_generation_prompt",
    "continue_final_message",
    "documents",
}


def template_kwargs(kwargs: dict | None, defaults: dict | None = None) -> dict:
    """The request's chat_template_kwargs over the server's defaults (--default-chat-template-kwargs)."""
    reserved = sorted(RESERVED_TEMPLATE_KWARGS & set(kwargs or {}))
    if reserved:
        raise APIError(
            400, f"chat_template_kwargs may not set {', '.join(reserved)}", param="chat_template_kwargs"
        )
    return {**(defaults or {}), **(kwargs or {})}
