"""Request outputs in vLLM's shape, plus the reasoning/content split of a thinking model."""

from dataclasses import dataclass, field

from qthink.errors import RequestError


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    reasoning_content: str | None = None
    content: str | None = None
    thinking_cut_by: str | None = (
        None  # "thinking_budget", "end_thinking" or "loop_guard": the engine closed the thinking
    )

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    num_cached_tokens: int = 0
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    refusal: RequestError | None = None  # the request was refused before any output, and why
