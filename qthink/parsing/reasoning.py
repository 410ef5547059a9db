"""Split a thinking model's output into reasoning and answer, whole or streamed, by </think> tokens."""

from qthink.tokenizer import THINK_END_ID, THINK_START_ID, IncrementalDetokenizer


def split_reasoning(token_ids: list[int], tokenizer, thinking: bool = True) -> tuple[str | None, str | None]:
    """(reasoning, content). Reasoning is what comes before the last </think>. Without one,
    the output is unfinished thinking when the prompt opened <think> (the 2507 template) or
    the model opened it itself, and plain content otherwise. Both are stripped of newlines."""
    ids = list(token_ids)
    opened = bool(ids) and ids[0] == THINK_START_ID
    if opened:
        ids = ids[1:]
    decode = lambda part: tokenizer.decode(part, skip_special_tokens=True).strip("\n")  # noqa: E731
    if THINK_END_ID in ids:
        end = len(ids) - 1 - ids[::-1].index(THINK_END_ID)
        return decode(ids[:end]), decode(ids[end + 1 :]) or None
    if thinking or opened:
        return decode(ids), None
    return None, decode(ids)


class ReasoningStreamParser:
    """Streams the same split as `split_reasoning`: the concatenated deltas equal its result
    (newlines that the whole-text split would strip are held back until text follows them)."""

    def __init__(self, tokenizer, thinking: bool = True):
        self.thinking = thinking
        self.started = False
        self.reasoning = _StrippedStream(IncrementalDetokenizer(tokenizer))
        self.content = _StrippedStream(IncrementalDetokenizer(tokenizer))

    def feed(self, token_ids: list[int]) -> tuple[str, str]:
        """Newly generated token ids in, (reasoning delta, content delta) out."""
        to_reasoning, to_content = [], []
        for token in token_ids:
            if not self.started:
                self.started = True
                if token == THINK_START_ID:
                    self.thinking = True
                    continue
            if self.thinking and token == THINK_END_ID:
                self.thinking = False
            elif self.thinking:
                to_reasoning.append(token)
            else:
                to_content.append(token)
        return self.reasoning.push(to_reasoning), self.content.push(to_content)


class _StrippedStream:
    """Text of a token stream as `.strip("\\n")` would leave it, released as it becomes certain."""

    def __init__(self, detokenizer: IncrementalDetokenizer):
        self.detokenizer = detokenizer
        self.full = ""
        self.emitted = 0

    def push(self, token_ids: list[int]) -> str:
        if token_ids:
            self.full += self.detokenizer.push(token_ids)
        view = self.full.lstrip("\n").rstrip("\n")
        delta = view[self.emitted :]
        self.emitted = len(view)
        return delta
