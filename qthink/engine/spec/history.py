"""Cross-request drafting: recently finished texts, indexed by n-gram, propose what followed."""

from collections import deque


class RequestHistory:
    """The last `max_requests` finished texts (prompt and output). Every n-gram (min_n <= n <=
    max_n) maps to the position after its latest occurrence in them; a proposal tries the
    longest suffix first. Requests that share a shape (an answer template, a format, phrases
    a model keeps using) then draft each other's recurring spans: suffix decoding's idea
    (Oliaro et al. 2024) on a hash index. When the texts exceed the limit the older half goes
    and the index is rebuilt, so upkeep stays proportional to the tokens added."""

    def __init__(self, min_n: int, max_n: int, max_requests: int):
        self.min_n, self.max_n, self.max_requests = min_n, max_n, max_requests
        self.texts: deque[list[int]] = deque()
        self.index: dict[tuple[int, ...], tuple[list[int], int]] = {}

    def add(self, tokens: list[int]) -> None:
        """Keep a finished request's text."""
        text = list(tokens)
        self.texts.append(text)
        if len(self.texts) > self.max_requests:
            for _ in range(len(self.texts) - self.max_requests // 2):
                self.texts.popleft()
            self.index = {}
            for kept in self.texts:
                self._index(kept)
        else:
            self._index(text)

    def propose(self, tokens: list[int], k: int, longer_than: int = 0) -> list[int]:
        """Up to k tokens that followed the longest recorded n-gram ending `tokens`, if that is
        longer than `longer_than` tokens (the match the sequence's own text already has)."""
        for n in range(min(self.max_n, len(tokens)), max(self.min_n, longer_than + 1) - 1, -1):
            hit = self.index.get(tuple(tokens[len(tokens) - n :]))
            if hit is not None:
                text, start = hit
                return text[start : start + k]
        return []

    def _index(self, text: list[int]) -> None:
        body = text[:-1]  # an n-gram at the very end has nothing after it
        for n in range(self.min_n, self.max_n + 1):
            # the n-grams of body in order (a later one wins), each with the position after it
            grams = zip(*(body[i:] for i in range(n)))
            self.index.update(zip(grams, ((text, end) for end in range(n, len(text)))))
