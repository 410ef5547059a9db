"""Stop strings matched on the detokenized text, across token boundaries."""


class StopStringMatcher:
    """Feed text deltas; text that could still turn into a stop string is held back, and the
    output ends right before the earliest stop (or after it, with include_stop_str_in_output)."""

    def __init__(self, stops: list[str], include_stop_str_in_output: bool = False):
        self.stops = [s for s in stops if s]
        self.include = include_stop_str_in_output
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool, str | None]:
        """(text safe to emit now, whether a stop matched, the stop string that matched)."""
        if self.stopped:
            return "", True, None
        self.pending += text
        hit = self._earliest()
        if hit is not None:
            at, stop = hit
            end = at + len(stop) if self.include else at
            emit, self.pending, self.stopped = self.pending[:end], "", True
            return emit, True, stop
        cut = max(0, len(self.pending) - self.hold)
        emit, self.pending = self.pending[:cut], self.pending[cut:]
        return emit, False, None

    def flush(self) -> str:
        """At the end of the sequence: the held-back tail, which did not become a stop."""
        tail, self.pending = self.pending, ""
        return tail

    def _earliest(self) -> tuple[int, str] | None:
        found = [(self.pending.find(s), s) for s in self.stops]
        found = [(i, s) for i, s in found if i >= 0]
        return min(found, key=lambda f: (f[0], -len(f[1]))) if found else None
