"""Thinking traces as JSON files: the schema, saving, loading, and building one from an output.

A trace records one answer of the model and what led to it:

- ``messages``: the conversation sent to the model (OpenAI chat format).
- ``answer``: the reply: ``reasoning_content`` (the thinking), ``content`` (the answer),
  ``tool_calls``, ``finish_reason`` and ``tokens`` — one entry per generated token with its
  text, id (when the producer knows it), log-probability, the top alternatives, which part of
  the reply it belongs to (``thinking``, ``answer`` or ``tool``) and when it arrived.
- ``timings``: seconds from sending the request to the first token, the first thinking
  token, the first answer token and the end.
- ``settings``: the sampling settings and thinking budget the answer was made with.

``qthink view --schema`` prints the JSON Schema; the web page writes and reads the same shape.
"""

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qthink.parsing.thinking import ThinkingFormat

FORMAT: Final = "qthink-trace"
VERSION = 1


Part = Literal["thinking", "answer", "tool"]


class TraceError(ValueError):
    """A file is not a readable qthink trace."""


class TopLogprob(BaseModel):
    text: str = Field(description="the alternative token's text")
    logprob: float = Field(description="its natural-log probability")
    id: int | None = Field(default=None, description="its token id, when known")


class TraceToken(BaseModel):
    text: str = Field(description="the token's text as it was streamed")
    id: int | None = Field(default=None, description="token id, when the producer knows it")
    logprob: float | None = Field(default=None, description="natural-log probability of this token")
    top: list[TopLogprob] = Field(default_factory=list, description="most likely alternatives")
    part: Part = Field(description="the part it belongs to")
    t: float | None = Field(default=None, description="seconds from the request to this token")


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow")
    reasoning_content: str | None = Field(default=None, description="the thinking")
    content: str | None = Field(default=None, description="the answer shown to the user")
    tool_calls: list[dict[str, Any]] = Field(default_factory=list, description="OpenAI shape")
    finish_reason: str | None = None
    thinking_closed_by: str | None = Field(
        default=None,
        description="thinking_budget, end_thinking or loop_guard: the engine closed the thinking",
    )
    tokens: list[TraceToken] = Field(default_factory=list, description="generated tokens")


class Timings(BaseModel):
    first_token: float | None = Field(default=None, description="seconds to the first token")
    first_thinking_token: float | None = Field(default=None, description="seconds to the first thought")
    first_answer_token: float | None = Field(default=None, description="seconds to the first answer token")
    end: float | None = Field(default=None, description="seconds to the last token")


class Trace(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: Literal["qthink-trace"] = FORMAT
    version: int = VERSION
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    model: str | None = None
    title: str | None = Field(default=None, description="a short name shown in the viewer")
    settings: dict[str, Any] = Field(default_factory=dict, description="sampling settings")
    messages: list[dict[str, Any]] = Field(description="the conversation sent to the model")
    answer: Answer
    timings: Timings = Field(default_factory=Timings)
    usage: dict[str, Any] | None = None

    def question(self) -> str:
        """The last user message: what two traces must share to be compared."""
        users = [m for m in self.messages if m.get("role") == "user"]
        content = users[-1].get("content") if users else ""
        return content if isinstance(content, str) else json.dumps(content)


def trace_schema() -> dict:
    return Trace.model_json_schema()


def parse_trace(data: dict | str) -> Trace:
    """Validate a trace from a dict or JSON text; TraceError says what is wrong."""
    try:
        raw = json.loads(data) if isinstance(data, str) else data
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise TraceError(f'not a qthink trace (expected "format": "{FORMAT}")')
        if raw.get("version", VERSION) > VERSION:
            raise TraceError(f"trace version {raw['version']} is newer than this qthink reads")
        return Trace.model_validate(raw)
    except json.JSONDecodeError as e:
        raise TraceError(f"not JSON: {e}") from e
    except ValidationError as e:
        raise TraceError(f"invalid trace: {e}") from e


def load_trace(path: str | Path) -> Trace:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise TraceError(f"cannot read {path}: {e.strerror}") from e
    try:
        return parse_trace(text)
    except TraceError as e:
        raise TraceError(f"{path}: {e}") from e


def save_trace(trace: Trace, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(trace.model_dump_json(indent=1, exclude_none=True), encoding="utf-8")
    return path


def trace_from_output(
    messages: list[dict],
    output,
    tokenizer,
    settings: dict | None = None,
    timings: Timings | None = None,
    model: str | None = None,
) -> Trace:
    """A trace of one engine CompletionOutput (token ids, logprobs, reasoning/content split).
    Pass a RequestOutput instead to also take its timings from the engine's metrics."""
    if hasattr(output, "outputs"):
        timings = timings or timings_from_metrics(output.metrics)
        output = output.outputs[0]
    ids = list(output.token_ids)
    texts = _token_texts(ids, tokenizer)
    fmt = ThinkingFormat.from_tokenizer(tokenizer)
    in_thinking = fmt.token_parts(ids, output.reasoning_content is not None)
    parts: list[Part] = ["thinking" if t else "answer" for t in in_thinking]
    logprobs = output.logprobs or [None] * len(ids)
    tokens = [
        _trace_token(i, text, part, lp)
        for i, text, part, lp in zip(ids, texts, parts, logprobs, strict=False)
    ]
    answer = Answer(
        reasoning_content=output.reasoning_content,
        content=output.content,
        finish_reason=output.finish_reason,
        thinking_closed_by=getattr(output, "thinking_cut_by", None),
        tokens=tokens,
    )
    return Trace(
        messages=messages,
        answer=answer,
        settings=settings or {},
        timings=timings or Timings(),
        model=model,
    )


def timings_from_metrics(metrics: dict) -> Timings:
    """Seconds from arrival, from the engine's monotonic `arrival`, `first_token` and `now`."""
    arrival = metrics.get("arrival")
    if arrival is None:
        return Timings()
    since = lambda key: None if metrics.get(key) is None else metrics[key] - arrival  # noqa: E731
    return Timings(first_token=since("first_token"), end=since("now"))


def _token_texts(ids: list[int], tokenizer) -> list[str]:
    """Each token's text as the running decode adds it, so the texts join to the full text."""
    from qthink.tokenizer import IncrementalDetokenizer

    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=False)
    return [detok.push([i]) for i in ids]


def _trace_token(token_id: int, text: str, part: Part, logprobs: dict | None) -> TraceToken:
    if not logprobs:
        return TraceToken(text=text, id=token_id, part=part)
    chosen = logprobs.get(token_id)
    top = sorted(logprobs.items(), key=lambda kv: -kv[1].logprob)
    return TraceToken(
        text=text,
        id=token_id,
        part=part,
        logprob=chosen.logprob if chosen and math.isfinite(chosen.logprob) else None,
        top=[
            TopLogprob(text=lp.decoded_token or "", logprob=lp.logprob, id=i)
            for i, lp in top
            if math.isfinite(lp.logprob)
        ],
    )
