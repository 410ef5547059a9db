"""Thinking-loop guard: notice when the thinking keeps repeating one span, so it can be closed."""

from dataclasses import dataclass

_MOD = (1 << 61) - 1  # a Mersenne prime: the rolling hash stays exact in Python ints
_BASE = 1_000_003


@dataclass(frozen=True)
class LoopGuardConfig:
    """A loop: the last `window` thinking tokens have been seen `count` times, this time included."""

    window: int = 64
    count: int = 4

    def __post_init__(self) -> None:
        if self.window < 1 or self.count < 2:
            raise ValueError(f"loop_guard needs window >= 1 and count >= 2, got {self.window}, {self.count}")

    @classmethod
    def parse(cls, value: "bool | dict | LoopGuardConfig | None") -> "LoopGuardConfig | None":
        """None/False: off; True: the defaults; a dict with window and/or count."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"window", "count"}
            if unknown:
                raise ValueError(f"loop_guard takes window and count, not {', '.join(sorted(unknown))}")
            return cls(**value)
        raise ValueError(f"loop_guard must be true, false or {{'window': w, 'count': c}}, got {value!r}")


class LoopGuard:
    """Counts every window-long span of the thinking by a rolling hash, O(1) per token; a span
    seen `count` times (checked token by token against its previous occurrence, so a hash
    collision never fires) is a loop. `period` is then the distance between the last two."""

    def __init__(self, config: LoopGuardConfig):
        self.window, self.count = config.window, config.count
        self.tokens: list[int] = []
        self.hash = 0
        self.top = pow(_BASE, self.window - 1, _MOD)  # weight of the token leaving the window
        self.seen: dict[int, tuple[int, int]] = {}  # span hash -> (times seen, last end position)
        self.period: int | None = None

    def observe(self, token: int) -> bool:
        """Add one thinking token; True when the thinking is looping."""
        tokens = self.tokens
        if len(tokens) >= self.window:
            self.hash = (self.hash - (tokens[-self.window] + 1) * self.top) % _MOD
        tokens.append(token)
        self.hash = (self.hash * _BASE + token + 1) % _MOD
        end = len(tokens)
        if end < self.window:
            return False
        times, last = self.seen.get(self.hash, (0, 0))
        if times and tokens[last - self.window : last] != tokens[end - self.window :]:
            times = 0  # a collision: count the new span afresh
        self.seen[self.hash] = (times + 1, end)
        if times + 1 >= self.count:
            self.period = end - last
            return True
        return False
