"""Structured output: grammars from response formats, token masks that start after the thinking."""

import json
from functools import cached_property
from pathlib import Path

import torch

from qthink.errors import RequestError

# Qwen writes "</think>\n\n" before its answer: the grammar lets a little whitespace through.
LEADING_SPACE = "start: /[ \\t\\n]{0,4}/ body\n"


class StructuredOutputError(RequestError):
    """A response format or guided-decoding request that cannot be compiled; says why."""


def lark_grammar(spec: dict) -> str:
    """A Lark grammar (llguidance's dialect) for one of: json_object, json_schema, choice,
    regex, grammar — the keys `SamplingParams.structured_output` takes, vLLM's names."""
    if not isinstance(spec, dict) or len(spec) != 1:
        raise StructuredOutputError(
            "structured_output takes exactly one of json_object, json_schema, choice, regex, grammar"
        )
    ((kind, value),) = spec.items()
    if kind == "json_object":
        return json_object_grammar()
    if kind == "json_schema":
        if not isinstance(value, dict):
            raise StructuredOutputError("json_schema must be a JSON Schema object")
        return LEADING_SPACE + "body: %json " + json.dumps(_compact(value))
    if kind == "choice":
        if not value or not all(isinstance(c, str) for c in value):
            raise StructuredOutputError("choice must be a non-empty list of strings")
        return LEADING_SPACE + "body: " + " | ".join(json.dumps(c) for c in value)
    if kind == "regex":
        if not isinstance(value, str):
            raise StructuredOutputError("regex must be a string")
        return LEADING_SPACE + "body: /" + value.replace("/", "\\/") + "/"
    if kind == "grammar":
        if not isinstance(value, str):
            raise StructuredOutputError("grammar must be a Lark grammar string")
        return value
    raise StructuredOutputError(f"unknown structured output kind {kind!r}")


# "Any JSON object" with bounds a model can always finish within: a free-form grammar would let
# one string (or key, or list) run to the token limit.
JSON_OBJECT_DEPTH = 4  # objects and arrays nest at most this deep below the top-level object
JSON_OBJECT_ITEMS = 64  # members of one object or array
JSON_OBJECT_KEY_CHARS = 64
JSON_OBJECT_STRING_CHARS = 512
_JSON_CHAR = r'([^"\\\x00-\x1f]|\\["\\\/bfnrt]|\\u[0-9a-fA-F]{4})'


def json_object_grammar() -> str:
    """A Lark grammar for one JSON object, compact separators, with bounded nesting, members,
    keys and strings."""
    more = JSON_OBJECT_ITEMS - 1
    rules = ["start: /[ \\t\\n]{0,4}/ object0"]
    for depth in range(JSON_OBJECT_DEPTH + 1):
        value = f"value{depth + 1}" if depth < JSON_OBJECT_DEPTH else "scalar"
        rules += [
            f'object{depth}: "{{" (pair{depth} (", " pair{depth}){{0,{more}}})? "}}"',
            f'pair{depth}: KEY ": " {value}',
            f'array{depth}: "[" ({value} (", " {value}){{0,{more}}})? "]"',
        ]
        if depth:
            rules.append(f"value{depth}: scalar | object{depth} | array{depth}")
    rules += [
        'scalar: STRING | NUMBER | "true" | "false" | "null"',
        f'KEY: /"{_JSON_CHAR}{{0,{JSON_OBJECT_KEY_CHARS}}}"/',
        f'STRING: /"{_JSON_CHAR}{{0,{JSON_OBJECT_STRING_CHARS}}}"/',
        r"NUMBER: /-?(0|[1-9][0-9]{0,15})(\.[0-9]{1,15})?([eE][+-]?[0-9]{1,3})?/",
    ]
    return "\n".join(rules)


def tool_call_grammar(
    tools: list[dict], markers: tuple[int, int], name: str | None = None, parallel: bool = True
) -> str:
    """A grammar whose answer is Hermes tool calls to `tools` (one call to `name` when given,
    else one or more, or exactly one without `parallel`): OpenAI's tool_choice "required" or a
    named function, made certain. `markers`: the vocabulary's ids of <tool_call> and </tool_call>."""
    functions = [t.get("function", t) for t in tools or []]
    allowed = [f for f in functions if name is None or f.get("name") == name]
    if not allowed:
        raise StructuredOutputError(f"tool_choice names {name!r}, which is not among the tools")
    schemas = [
        {
            "type": "object",
            "properties": {"name": {"const": f["name"]}, "arguments": _closed(f.get("parameters"))},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in allowed
    ]
    call = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    repeat = ' ("\\n" call)*' if parallel and not name else ""
    return (
        LEADING_SPACE
        + f"body: call{repeat}\n"
        + f'call: <[{markers[0]}]> "\\n" json "\\n" <[{markers[1]}]>\n'
        + "json: %json "
        + json.dumps(_compact(call))
    )


def _closed(parameters: dict | None) -> dict:
    """A forced call uses only the declared parameters (a parameterless tool gets `{}`)."""
    schema = dict(parameters or {"type": "object", "properties": {}})
    schema.setdefault("additionalProperties", False)
    return schema


def _compact(schema: dict) -> dict:
    """Fixed separators, no free whitespace: a model cannot pad its JSON with endless blanks
    (a known failure of flexible-whitespace JSON grammars). A schema's own x-guidance wins."""
    return {
        "x-guidance": {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "},
        **schema,
    }


class GrammarCompiler:
    """Compiles grammars against one tokenizer; the vocabulary index is built once, lazily."""

    def __init__(self, tokenizer_json: Path, vocab_size: int, eos_token_id: int):
        self.tokenizer_json = tokenizer_json
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id

    @cached_property
    def _tokenizer(self):
        import llguidance

        text = Path(self.tokenizer_json).read_text()
        return llguidance.LLTokenizer(text, n_vocab=self.vocab_size, eos_token=self.eos_token_id, slices=[])

    def check(self, spec: dict) -> str:
        """Compile and validate `spec`; raise StructuredOutputError with the library's message."""
        import llguidance

        lark = lark_grammar(spec)
        try:
            grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        except Exception as e:
            raise StructuredOutputError(f"invalid grammar: {e}") from None
        error = llguidance.LLMatcher.validate_grammar(grammar, None)
        if error:
            raise StructuredOutputError(f"unsupported structured output: {error.strip()}")
        return grammar

    def state(self, spec: dict, active: bool) -> "GrammarState":
        import llguidance

        matcher = llguidance.LLMatcher(self._tokenizer, self.check(spec), log_level=1)
        closers = self._closers if "json_object" in spec else None
        return GrammarState(matcher, self.vocab_size, active, self.eos_token_id, closers)

    @cached_property
    def _closers(self) -> list[int]:
        """The single tokens that bring a JSON object nearer its end, most closing first."""
        ids = [self._tokenizer.tokenize_str(text) for text in CLOSING_TEXTS]
        return [t[0] for t in ids if len(t) == 1]


BYTE_BITS = (torch.arange(256)[:, None] >> torch.arange(8)) & 1 == 1  # [byte value, bit] -> set?


# Quotes first: inside a string a bracket is only more text.
CLOSING_TEXTS = ['"}', '"]', '"', "}}", "]}", "}", "]", ": ", ":", " ", "0", "null"]


class GrammarState:
    """One sequence's matcher. Inactive while the model thinks: the thinking stays free.

    With `closers` (json_object), once the model would end its turn before the object is
    complete, only the tokens that close it soonest stay allowed, so the object ends."""

    def __init__(self, matcher, vocab_size: int, active: bool, eos_id: int | None = None, closers=None):
        self.matcher = matcher
        self.active = active
        self.words = torch.zeros((vocab_size + 31) // 32, dtype=torch.int32)
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self.closers = closers
        self.closing = False

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits [vocab] of the tokens the grammar forbids now to -inf, in place."""
        allowed = self.allowed()
        if self.closers is not None and not allowed[self.eos_id]:
            self.closing = self.closing or int(logits.argmax()) == self.eos_id
            if self.closing:
                allowed = self._closing(allowed)
        logits.masked_fill_(~allowed.to(logits.device), float("-inf"))

    def _closing(self, allowed: torch.Tensor) -> torch.Tensor:
        """The one token that closes the object now if there is one, else the most closing token
        allowed; the whole allowed set inside a literal such as `tr`."""
        candidates = [t for t in self.closers if allowed[t]]
        pick = next((t for t in candidates if self._completes(t)), None)
        if pick is None and not candidates:
            return allowed
        only = torch.zeros_like(allowed)
        only[candidates[0] if pick is None else pick] = True
        return only

    def _completes(self, token_id: int) -> bool:
        if self.matcher.try_consume_tokens([token_id]) != 1:
            return False
        done = self.matcher.is_accepting()
        self.matcher.rollback(1)
        return done

    def observe(self, token_id: int) -> None:
        """Consume an answer token (the sequence turns the state active once thinking ends)."""
        if not self.matcher.consume_token(token_id):
            raise StructuredOutputError(f"token {token_id} broke the grammar: {self.matcher.get_error()}")

    def allowed(self) -> torch.Tensor:
        """Bool [vocab] of the tokens the grammar accepts next (EOS once it is complete)."""
        from llguidance.torch import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self.words.view(1, -1), 0)
        # Little-endian words: byte b of word w holds tokens 32w + 8b .. 32w + 8b + 7.
        return BYTE_BITS[self.words.view(torch.uint8).long()].flatten()[: self.vocab_size]
