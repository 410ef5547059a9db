"""Special tokens: which added tokens the vocabulary has, and encodings in which only the
chat template writes control tokens (their text typed into a message stays text)."""

import json
import re
from collections.abc import Callable
from functools import cached_property
from typing import cast

from tokenizers import Tokenizer as RustTokenizer

from qthink.tokenizer.chat_template import ChatTemplateError, nonce

# Roles whose text a person or a tool wrote: every added token typed there (`</think>`, `<tool_call>`,
# not only the special ones) is text; assistant turns keep theirs, which the template parses.
TYPED_ROLES = ("system", "user", "tool")


def encode_text(backend: RustTokenizer, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of `text`. Through encode_batch, which lets go of the GIL while it works (encode
    holds it), so tokenizing a long text on a worker thread leaves the event loop and the engine
    thread running."""
    return backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids


class SpecialTokens:
    """The vocabulary's added tokens, and the encodings that keep typed control-token text as text."""

    def __init__(self, backend: RustTokenizer):
        self.backend = backend
        added = backend.get_added_tokens_decoder()
        self.ids = {t.content: i for i, t in added.items() if t.special}
        longest_first = sorted(self.ids, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, longest_first)) or "(?!)")
        self.added_texts = [t.content for t in added.values()]

    @cached_property
    def text_backend(self) -> RustTokenizer:
        """A copy that reads special-token text as plain text; a copy because the switch is not per call."""
        backend = RustTokenizer.from_str(self.backend.to_str())
        backend.encode_special_tokens = True
        return backend

    @cached_property
    def all_text_backend(self) -> RustTokenizer:
        """A copy that reads the text of every added token, special or not, as plain text."""
        spec = json.loads(self.backend.to_str())
        for token in spec.get("added_tokens", []):
            token["special"] = True  # encode_special_tokens only splits tokens marked special
        backend = RustTokenizer.from_str(json.dumps(spec))
        backend.encode_special_tokens = True
        return backend

    def encode(self, text: str, split_special_tokens: bool = False) -> list[int]:
        backend = self.text_backend if split_special_tokens else self.backend
        return encode_text(backend, text)

    def shield_typed(self, message: dict, typed: dict[str, str]) -> dict:
        """Content of a typed role that holds added-token text goes through the template as a
        placeholder of letters, so the template cannot read control tokens into it."""
        content = message["content"]
        if message.get("role") not in TYPED_ROLES or not any(t in content for t in self.added_texts):
            return message
        placeholder = nonce()
        typed[placeholder] = content
        return {**message, "content": placeholder}

    def encode_typed(self, text: str, typed: dict[str, str], split_special_tokens: bool = False) -> list[int]:
        """Encode a rendering whose typed contents are placeholders: those become plain text."""
        if not typed:
            return self.encode(text, split_special_tokens=split_special_tokens)
        ids: list[int] = []
        for piece in re.split("(" + "|".join(typed) + ")", text):
            if piece in typed:
                ids += encode_text(self.all_text_backend, typed[piece])
            elif piece:
                ids += self.encode(piece, split_special_tokens=split_special_tokens)
        return ids

    def encode_guarded(
        self, render: Callable[[dict], str], data: dict, text: str, typed: dict[str, str]
    ) -> list[int]:
        """Render again with the special-token text in the inputs swapped for unguessable placeholders;
        every control token left in the rendering was then written by the template itself."""
        tag = nonce()
        placeholder_re = re.compile(f"{tag}(\\d+){tag}")
        guard = lambda s: self.pattern.sub(lambda m: f"{tag}{self.ids[m[0]]}{tag}", s)  # noqa: E731
        guarded = render(map_strings(data, guard))
        restore = lambda s: placeholder_re.sub(lambda m: cast(str, self.backend.id_to_token(int(m[1]))), s)  # noqa: E731
        if restore(guarded) != text:
            raise ChatTemplateError(
                "the chat template rewrites message text that holds special-token text such as <|im_start|>; "
                "remove it, or allow it with allow_special_tokens_in_content=True"
            )
        ids: list[int] = []
        for i, piece in enumerate(re.split(f"({self.pattern.pattern})", guarded)):
            if i % 2:
                ids.append(self.ids[piece])
            elif piece:
                ids += self.encode_typed(restore(piece), typed, split_special_tokens=True)
        return ids

    def in_any_string(self, value) -> bool:
        """True when special-token text occurs in any string inside `value`."""
        if isinstance(value, str):
            return bool(self.pattern.search(value))
        if isinstance(value, dict):
            return any(self.in_any_string(v) for v in value.values())
        if isinstance(value, list):
            return any(self.in_any_string(v) for v in value)
        return False


def map_strings(value, change: Callable[[str], str]):
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {k: map_strings(v, change) for k, v in value.items()}
    if isinstance(value, list):
        return [map_strings(v, change) for v in value]
    return value
