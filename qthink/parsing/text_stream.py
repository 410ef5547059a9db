"""Text that arrives in pieces: markers cut across deltas, and ends stripped as they become certain."""


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class StrippedStream:
    """A growing text as `.strip(chars)` would leave it, released as it becomes certain: leading
    `chars` are dropped, trailing ones wait until more text follows them."""

    def __init__(self, chars: str | None = None):
        self.chars = chars
        self.full = ""
        self.sent = 0

    def push(self, text: str) -> str:
        self.full += text
        view = self.full.strip(self.chars)
        delta, self.sent = view[self.sent :], len(view)
        return delta
