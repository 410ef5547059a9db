"""One thinking budget behind every API: effort levels and on/off switches as max_thinking_tokens."""

from dataclasses import dataclass

from qthink.engine.sampling_params import THINKING_EARLY_STOP
from qthink.server.errors import APIError

# Tokens of thinking per effort level; None: no cap (the model thinks until it closes).
# "none" is not a level here: it switches thinking off, which is a zero budget.
DEFAULT_EFFORT_BUDGETS: dict[str, int | None] = {
    "minimal": 256,
    "low": 1024,
    "medium": 8192,
    "high": None,
    "xhigh": None,
    "max": None,
}
# The early-stop phrase as a closed thinking ends with it (what clients see last in the thinking).
EARLY_STOP_TEXT = THINKING_EARLY_STOP.split("</think>")[0].strip()


class EffortBudgets:
    """The effort -> thinking tokens table, set with `--reasoning-effort-budgets low=1024,...`."""

    def __init__(self, budgets: dict[str, int | None] | None = None):
        self.budgets = {**DEFAULT_EFFORT_BUDGETS, **(budgets or {})}

    @classmethod
    def parse(cls, spec: str | None) -> "EffortBudgets":
        """`level=tokens` pairs, comma separated; `level=unlimited` lifts the cap."""
        budgets: dict[str, int | None] = {}
        for pair in filter(None, (p.strip() for p in (spec or "").split(","))):
            level, _, value = pair.partition("=")
            level, value = level.strip(), value.strip()
            if not level or level == "none" or not (value.isdigit() or value == "unlimited"):
                raise ValueError(
                    f"reasoning effort budget {pair!r}: write LEVEL=TOKENS or LEVEL=unlimited "
                    "(the level `none` always means no thinking)"
                )
            budgets[level] = None if value == "unlimited" else int(value)
        return cls(budgets)

    def tokens(self, effort: str, param: str) -> int | None:
        if effort == "none":
            return 0
        if effort not in self.budgets:
            levels = ", ".join(["none", *self.budgets])
            raise APIError(400, f"{param} must be one of {levels}, got {effort!r}", param=param)
        return self.budgets[effort]

    def table(self) -> dict[str, int | None]:
        return {"none": 0, **self.budgets}


@dataclass
class ThinkingPlan:
    """What a request asked of the thinking, and what the engine was told."""

    max_thinking_tokens: int | None = None
    disabled: bool = False  # the client switched thinking off
    forced_closed: bool = False  # ...on a model that always thinks: a zero budget closed it

    @property
    def asked(self) -> bool:
        return self.disabled or self.max_thinking_tokens is not None

    def metadata(self, cut_by: str | None) -> dict:
        """The response's account of the thinking, so a disabled thinking is never pretended."""
        data = {
            "max_thinking_tokens": self.max_thinking_tokens,
            "disabled": self.disabled,
            "closed_by": cut_by,  # thinking_budget, end_thinking, loop_guard; None: the model closed it
        }
        if self.forced_closed:
            data["note"] = (
                "this model always thinks; with thinking disabled, a zero thinking budget closed "
                "the thinking at once and the model answered"
            )
        return data


def thinking_plan(req, efforts: EffortBudgets, kwargs: dict) -> tuple[ThinkingPlan, dict]:
    """The budget of a chat request (max_thinking_tokens, thinking_token_budget, reasoning_effort,
    enable_thinking), and its template kwargs: switching thinking off also tells a hybrid
    template not to open it."""
    explicit = req.max_thinking_tokens if req.max_thinking_tokens is not None else req.thinking_token_budget
    effort = getattr(req, "reasoning_effort", None)
    budget = explicit
    if budget is None and effort is not None:
        budget = efforts.tokens(effort, "reasoning_effort")
    disabled = kwargs.get("enable_thinking") is False or (explicit is None and effort == "none")
    if disabled:
        budget, kwargs = 0, {**kwargs, "enable_thinking": False}
    return ThinkingPlan(budget, disabled), kwargs
