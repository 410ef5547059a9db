"""SamplingParams: how one request is sampled and when it stops (vLLM's names and meanings)."""

from dataclasses import dataclass, field, fields

from qthink.engine.loop_guard import LoopGuardConfig
from qthink.errors import RequestError

# Qwen's documented phrase that closes thinking early when the budget runs out.
THINKING_EARLY_STOP = (
    "\n\nConsidering the limited time by the user, I have to give the solution based on the "
    "thinking directly now.\n</think>\n\n"
)


class SamplingParamsError(RequestError):
    """A sampling parameter is out of range; the message and `param` name the field."""


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float | None = None  # None: the checkpoint's generation_config (0.6 on Qwen3)
    top_p: float | None = None
    top_k: int | None = None  # 0 or -1: no top-k
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = None  # None: up to the context limit
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None  # top-k logprobs per generated token; 0: only the sampled one
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    max_thinking_tokens: int | None = None
    thinking_early_stop: str = THINKING_EARLY_STOP
    structured_output: dict | None = None
    thinking_token_budget: int | None = None  # vLLM's name for max_thinking_tokens
    # End the thinking early when it loops: True, False, or {"window": w, "count": c}
    # (see LoopGuardConfig); None takes the engine's default.
    loop_guard: bool | dict | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.max_thinking_tokens is None and self.thinking_token_budget is not None:
            self.max_thinking_tokens = self.thinking_token_budget
        self.thinking_token_budget = None
        self.validate()

    def validate(self) -> None:
        """Raise SamplingParamsError naming the first field with an invalid value."""
        checks = [
            ("n", self.n >= 1, "must be >= 1"),
            ("temperature", self.temperature is None or self.temperature >= 0, "must be >= 0"),
            ("top_p", self.top_p is None or 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", self.top_k is None or self.top_k >= -1, "must be -1, 0 or positive"),
            ("min_p", 0 <= self.min_p <= 1, "must be in [0, 1]"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "must be in [-2, 2]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "must be in [-2, 2]"),
            ("repetition_penalty", self.repetition_penalty > 0, "must be > 0"),
            ("max_tokens", self.max_tokens is None or self.max_tokens >= 1, "must be >= 1"),
            ("min_tokens", self.min_tokens >= 0, "must be >= 0"),
            ("logprobs", self.logprobs is None or 0 <= self.logprobs <= 20, "must be in [0, 20]"),
            (
                "prompt_logprobs",
                self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20,
                "must be in [0, 20]",
            ),
            (
                "max_thinking_tokens",
                self.max_thinking_tokens is None or self.max_thinking_tokens >= 0,
                "must be >= 0",
            ),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise SamplingParamsError(f"{name} {rule}, got {getattr(self, name)!r}", param=name)
        try:
            LoopGuardConfig.parse(self.loop_guard)
        except ValueError as e:
            raise SamplingParamsError(str(e), param="loop_guard") from None
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise SamplingParamsError("min_tokens must not exceed max_tokens", param="min_tokens")

    def with_defaults(self, defaults: dict) -> "SamplingParams":
        """A copy whose unset temperature/top_p/top_k come from the checkpoint's generation config."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["temperature"] = _first(self.temperature, defaults.get("temperature"), 1.0)
        values["top_p"] = _first(self.top_p, defaults.get("top_p"), 1.0)
        values["top_k"] = _first(self.top_k, defaults.get("top_k"), 0)
        if not defaults.get("do_sample", True) and self.temperature is None:
            values["temperature"] = 0.0
        return SamplingParams(**values)

    @property
    def greedy(self) -> bool:
        return self.temperature is not None and self.temperature < 1e-5


def _first(*values):
    return next(v for v in values if v is not None)
