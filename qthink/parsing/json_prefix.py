"""A JSON value read one character at a time: how far it is well-formed so far, and where it ends."""

import re

NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
NUMBER_PREFIX = re.compile(r"-|-?(0|[1-9]\d*)(\.\d*|\.\d+[eE][+-]?\d*|[eE][+-]?\d*)?")
NUMBER_CHARS = set("0123456789+-.eE")
LITERALS = ("true", "false", "null")
WHITESPACE = set(" \t\n\r")
ESCAPES = set('"\\/bfnrtu')
HEX = set("0123456789abcdefABCDEF")


class JsonPrefix:
    """Feed text; `consumed` counts the characters that are a well-formed start of one JSON
    value (RFC 8259: no NaN, no trailing commas), `done` says the value is complete, `broken`
    that the next character could not continue it."""

    def __init__(self) -> None:
        self.stack: list[str] = []  # open containers, "{" or "["
        self.expect = "value"  # value | value_or_end | key | key_or_end | colon | comma_or_end
        self.mode: str | None = None  # string | number | literal, while inside one
        self.token = ""  # the number or literal so far
        self.is_key = False
        self.escape = False
        self.hex_left = 0
        self.consumed = 0
        self.done = False
        self.broken = False

    def feed(self, text: str) -> int:
        """Characters of `text` taken; fewer than all when the value ended or broke."""
        for i, ch in enumerate(text):
            if self.done or self.broken:
                return i
            if not self._step(ch):
                self.broken = not self.done  # a bare number is done at the character after it
                return i
            self.consumed += 1
        return len(text)

    def _step(self, ch: str) -> bool:
        if self.mode == "string":
            return self._string(ch)
        if self.mode == "literal":
            return self._literal(ch)
        if self.mode == "number":
            if ch in NUMBER_CHARS:
                self.token += ch
                return NUMBER_PREFIX.fullmatch(self.token) is not None
            if not NUMBER.fullmatch(self.token):
                return False
            self.mode = None
            self._after_value()
            if self.done:
                return False
        if ch in WHITESPACE:
            return True
        return self._structure(ch)

    def _structure(self, ch: str) -> bool:
        expect = self.expect
        if expect in ("value", "value_or_end"):
            if expect == "value_or_end" and ch == "]":
                return self._close()
            return self._begin_value(ch)
        if expect in ("key", "key_or_end"):
            if expect == "key_or_end" and ch == "}":
                return self._close()
            if ch != '"':
                return False
            self.mode, self.is_key = "string", True
            return True
        if expect == "colon":
            if ch != ":":
                return False
            self.expect = "value"
            return True
        top = self.stack[-1]
        if ch == ",":
            self.expect = "key" if top == "{" else "value"
            return True
        if ch == ("}" if top == "{" else "]"):
            return self._close()
        return False

    def _begin_value(self, ch: str) -> bool:
        if ch in "{[":
            self.stack.append(ch)
            self.expect = "key_or_end" if ch == "{" else "value_or_end"
        elif ch == '"':
            self.mode, self.is_key = "string", False
        elif ch in "-0123456789":
            self.mode, self.token = "number", ch
        elif ch in "tfn":
            self.mode, self.token = "literal", ch
        else:
            return False
        return True

    def _string(self, ch: str) -> bool:
        if self.hex_left:
            self.hex_left -= 1
            return ch in HEX
        if self.escape:
            self.escape = False
            self.hex_left = 4 if ch == "u" else 0
            return ch in ESCAPES
        if ch == "\\":
            self.escape = True
        elif ch == '"':
            self.mode = None
            if self.is_key:
                self.expect = "colon"
            else:
                self._after_value()
        elif ord(ch) < 0x20:
            return False
        return True

    def _literal(self, ch: str) -> bool:
        self.token += ch
        if not any(word.startswith(self.token) for word in LITERALS):
            return False
        if self.token in LITERALS:
            self.mode = None
            self._after_value()
        return True

    def _close(self) -> bool:
        self.stack.pop()
        self._after_value()
        return True

    def _after_value(self) -> None:
        if self.stack:
            self.expect = "comma_or_end"
        else:
            self.done = True
