"""Stop strings matched on the detokenized text, across token boundaries."""


class StopStringMatcher:
    """Feed text deltas; the output ends at the first stop string to complete in the text
    (before it, or after it with include_stop_str_in_output). Only a tail that is still the
    start of some stop string is held back, so the result never depends on how the text was
    split into deltas."""

    def __init__(self, stops: list[str], include_stop_str_in_output: bool = False):
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self.include = include_stop_str_in_output
        self.pending = ""
        self.matched: str | None = None

    @property
    def stopped(self) -> bool:
        return self.matched is not None

    def feed(self, text: str) -> tuple[str, bool, str | None]:
        """(text safe to emit now, whether a stop matched, the stop string that matched)."""
        if self.stopped:
            return "", True, self.matched
        self.pending += text
        hit = self._first_completed()
        if hit is not None:
            start, self.matched = hit
            end = start + len(self.matched) if self.include else start
            emit, self.pending = self.pending[:end], ""
            return emit, True, self.matched
        cut = len(self.pending) - self._held_length()
        emit, self.pending = self.pending[:cut], self.pending[cut:]
        return emit, False, None

    def flush(self) -> str:
        """At the end of the sequence: the held-back tail, which never became a stop."""
        tail, self.pending = self.pending, ""
        return tail

    def _first_completed(self) -> tuple[int, str] | None:
        """The stop whose first occurrence ends earliest; at the same end, the longest.
        Everything before the pending text was searched already, and any stop that began
        there is still held in the pending text."""
        best = None
        for stop in self.stops:
            start = self.pending.find(stop)
            if start >= 0:
                key = (start + len(stop), -len(stop))
                if best is None or key < best[0]:
                    best = (key, start, stop)
        return None if best is None else (best[1], best[2])

    def _held_length(self) -> int:
        """Length of the longest tail of the pending text that begins some stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.pending)), longest, -1):
                if self.pending.endswith(stop[:size]):
                    longest = size
                    break
        return longest
