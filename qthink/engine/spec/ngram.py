"""N-gram drafter: find the text's latest earlier match of its own suffix, propose what followed."""


class NgramDrafter:
    """Prompt lookup over one sequence's prompt and output, indexed incrementally.

    Every n-gram (min_n <= n <= max_n) that ends before the last token maps to the position
    right after its latest occurrence; indexing a new token costs max_n - min_n + 1 dict
    writes, and a proposal tries the longest suffix first. The continuation is read from the
    text extended by the draft itself, so a match just before the end proposes the repeating
    period (the shape of a loop, and of copied numbers)."""

    def __init__(self, min_n: int, max_n: int, k: int):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= prompt_lookup_min <= prompt_lookup_max, got {min_n}, {max_n}")
        if k < 1:
            raise ValueError(f"num_speculative_tokens must be >= 1, got {k}")
        self.min_n, self.max_n, self.k = min_n, max_n, k
        self.index: dict[tuple[int, ...], int] = {}
        self.num_indexed = 0  # the n-grams ending before this position are in the index

    def propose(self, tokens: list[int], k: int | None = None) -> list[int]:
        """Up to k draft tokens to follow `tokens`, a list that only ever grows between calls."""
        return self.match(tokens, k)[1]

    def match(self, tokens: list[int], k: int | None = None) -> tuple[int, list[int]]:
        """(n, draft): the longest matched n-gram's length (0: none) and `propose`'s draft."""
        k = self.k if k is None else k
        end = len(tokens)
        self._index(tokens, end - 1)
        for n in range(min(self.max_n, end - 1), self.min_n - 1, -1):
            start = self.index.get(tuple(tokens[end - n : end]))
            if start is not None:
                return n, _continuation(tokens, start, k)
        return 0, []

    def _index(self, tokens: list[int], stop: int) -> None:
        """Index the n-grams ending at positions num_indexed .. stop - 1 (latest wins)."""
        index, lo, hi = self.index, self.min_n, self.max_n
        for last in range(self.num_indexed, stop):
            for n in range(lo, min(hi, last + 1) + 1):
                index[tuple(tokens[last + 1 - n : last + 1])] = last + 1
        self.num_indexed = max(self.num_indexed, stop)


def _continuation(tokens: list[int], start: int, k: int) -> list[int]:
    """k tokens from `start` on, past the end continuing with the draft itself (start < end)."""
    end = len(tokens)
    draft = tokens[start : start + k]
    while len(draft) < k:
        i = start + len(draft) - end  # position inside the draft, always behind the write head
        draft.append(draft[i])
    return draft
