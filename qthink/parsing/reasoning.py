"""Split a thinking model's output into reasoning and answer at </think>, whole or streamed."""

from qthink.tokenizer import THINK_END_ID, THINK_START_ID

THINK_START, THINK_END = "<think>", "</think>"


def split_reasoning(token_ids: list[int], tokenizer, thinking: bool = True) -> tuple[str | None, str | None]:
    """(reasoning, content) of generated token ids: reasoning is what precedes the last
    </think> (151668). Without one, the output is thinking that never finished when the
    prompt opened <think> (the 2507 template) or the model opened it, else plain content."""
    ids = list(token_ids)
    opened = bool(ids) and ids[0] == THINK_START_ID
    ids = ids[1:] if opened else ids
    if THINK_END_ID in ids:
        end = len(ids) - 1 - ids[::-1].index(THINK_END_ID)
        reasoning, content = _decode(tokenizer, ids[:end]), _decode(tokenizer, ids[end + 1 :])
        return reasoning, content or None
    if thinking or opened:
        return _decode(tokenizer, ids), None
    return None, _decode(tokenizer, ids)


def split_reasoning_text(text: str, thinking: bool = True) -> tuple[str | None, str | None]:
    """The same rules on decoded text (</think> is a plain, non-skipped token), so that text
    already cut at a stop string splits correctly."""
    opened = text.startswith(THINK_START)
    body = text[len(THINK_START) :] if opened else text
    if THINK_END in body:
        reasoning, _, content = body.rpartition(THINK_END)
        return reasoning.strip("\n"), content.strip("\n") or None
    if thinking or opened:
        return body.strip("\n"), None
    return None, body.strip("\n")


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True).strip("\n")


class ReasoningStreamParser:
    """Text deltas in, (reasoning delta, content delta) out. A </think> split across deltas
    is held back until it is whole; newlines the whole-text split strips are held back until
    text follows them, so the concatenated deltas equal `split_reasoning_text` (for output
    with one </think>, which is what the model writes). With `thinking=False` the stream
    has already sent everything as content when a stray </think> comes, so it is kept as
    text there, where the whole-text split would still cut at it."""

    def __init__(self, thinking: bool = True):
        self.thinking = thinking
        self.started = False
        self.pending = ""
        self.reasoning = _StrippedStream()
        self.content = _StrippedStream()

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        """Route new text; `final=True` on the last delta releases what was held back for a
        marker that never came (thinking cut off right after "<", say)."""
        self.pending += text
        if not self.started:
            if THINK_START.startswith(self.pending) and not final:
                return "", ""  # may still become "<think>"
            self.started = True
            if self.pending.startswith(THINK_START):
                self.thinking, self.pending = True, self.pending[len(THINK_START) :]
        to_reasoning = to_content = ""
        if self.thinking:
            at = self.pending.find(THINK_END)
            if at >= 0:
                to_reasoning, to_content = self.pending[:at], self.pending[at + len(THINK_END) :]
                self.thinking, self.pending = False, ""
            else:
                keep = 0 if final else partial_suffix(self.pending, THINK_END)
                cut = len(self.pending) - keep
                to_reasoning, self.pending = self.pending[:cut], self.pending[cut:]
        else:
            to_content, self.pending = self.pending, ""
        return self.reasoning.push(to_reasoning), self.content.push(to_content)


class _StrippedStream:
    """A growing text as `.strip("\\n")` would leave it, released as it becomes certain."""

    def __init__(self):
        self.full = ""
        self.emitted = 0

    def push(self, text: str) -> str:
        self.full += text
        view = self.full.lstrip("\n").rstrip("\n")
        delta = view[self.emitted :]
        self.emitted = len(view)
        return delta


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
