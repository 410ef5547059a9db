"""IncrementalDetokenizer: token ids in one at a time, text out once its characters are complete."""


class IncrementalDetokenizer:
    """Decode token by token; text is released only once its UTF-8 characters are complete.
    Each push decodes a short window (prefix/read offsets), not the whole sequence."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""

    def push(self, token_ids: list[int]) -> str:
        """Add tokens; returns the text they complete (empty while a character is still partial)."""
        self.ids.extend(token_ids)
        before, after = self._window()
        # A byte-level token can end inside a multi-byte character, which decodes as U+FFFD for now.
        if after.endswith("\ufffd"):
            return ""
        return self._release(after[len(before) :])

    def finish(self) -> str:
        """At the end of the stream, release what is held back, broken characters included."""
        before, after = self._window()
        return self._release(after[len(before) :])

    def _window(self) -> tuple[str, str]:
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=self.skip)
        after = decode(self.ids[self.prefix_offset :], skip_special_tokens=self.skip)
        return before, after

    def _release(self, delta: str) -> str:
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += delta
        return delta
