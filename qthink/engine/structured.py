"""Structured output: grammars from response formats, compiled off the engine thread within
size and time limits, and token masks that start after the thinking."""

import json
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from itertools import accumulate
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from pathlib import Path

import torch

from qthink.errors import RequestError

# Qwen writes "</think>\n\n" before its answer: the grammar lets a little whitespace through.
LEADING_SPACE = "start: /[ \\t\\n]{0,4}/ body\n"


class StructuredOutputError(RequestError):
    """A response format or guided-decoding request that cannot be compiled; says why."""


# Size limits, checked before any compiling: the largest of each compiles in about 2 s on one
# core (a 100,000-entry choice of 20 characters each in 1.5 s, a 5,000-property schema in 2.3 s).
MAX_CHOICES = 100_000  # entries of one choice list
MAX_CHOICE_CHARS = 2_000_000  # characters of all entries together
MAX_GRAMMAR_CHARS = 262_144  # a regex, a Lark grammar, or a JSON schema (about, as JSON text)
MAX_SCHEMA_DEPTH = 64  # objects and lists nested in a JSON schema
# Properties of one object schema: past about 1,000 optional ones llguidance's parser passes
# its 2,000 items in a row after the first key, and the request would fail mid-answer.
MAX_SCHEMA_PROPERTIES = 1_000
COMPILE_TIMEOUT = 10.0  # seconds a grammar may compile (the engine's grammar_compile_timeout)
COMPILE_WORKERS = 2  # grammars compiled at once; the others queue (their time starts with them)


def check_spec(spec: dict, param: str | None = None) -> None:
    """Refuse, before compiling, a spec of the wrong shape or over the size limits; the error
    names `param` (the request field it came from; by default the spec's kind)."""
    if not isinstance(spec, dict) or len(spec) != 1:
        raise StructuredOutputError(
            "structured_output takes exactly one of json_object, json_schema, choice, regex, grammar",
            param=param,
        )
    ((kind, value),) = spec.items()
    name = param or kind
    if kind == "json_object":
        return
    if kind == "json_schema":
        if not isinstance(value, dict):
            raise StructuredOutputError("json_schema must be a JSON Schema object", param=name)
        _check_schema_size(value, name)
    elif kind == "choice":
        if not isinstance(value, list) or not value or set(map(type, value)) != {str}:  # C loops
            raise StructuredOutputError("choice must be a non-empty list of strings", param=name)
        _at_most(len(value), MAX_CHOICES, f"{name} has {len(value)} entries", name)
        chars = sum(map(len, value))
        _at_most(chars, MAX_CHOICE_CHARS, f"{name} has {chars} characters in all", name)
    elif kind in ("regex", "grammar"):
        if not isinstance(value, str):
            what = "a string" if kind == "regex" else "a Lark grammar string"
            raise StructuredOutputError(f"{kind} must be {what}", param=name)
        _at_most(len(value), MAX_GRAMMAR_CHARS, f"{name} is {len(value)} characters long", name)
    else:
        raise StructuredOutputError(f"unknown structured output kind {kind!r}", param=param)


def _at_most(value: int, limit: int, what: str, param: str) -> None:
    if value > limit:
        raise StructuredOutputError(f"{what}; the limit is {limit}", param=param, code="grammar_too_large")


def _check_schema_size(schema: dict, param: str) -> None:
    """Its length as JSON text and its nesting, by C loops alone (a walk in Python takes a tenth
    of a second on a schema near the limit, on the thread that checks it)."""
    try:
        text = json.dumps(schema)
    except RecursionError:
        text = None
    if text is None:
        raise StructuredOutputError(
            f"{param}'s JSON schema nests too deep to encode; the limit is {MAX_SCHEMA_DEPTH} levels",
            param=param,
            code="grammar_too_large",
        )
    _at_most(len(text), MAX_GRAMMAR_CHARS, f"{param}'s JSON schema is {len(text)} characters as JSON", param)
    brackets = _BRACKETS.findall(_JSON_STRINGS.sub("", text))
    depth = max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)
    _at_most(depth, MAX_SCHEMA_DEPTH, f"{param}'s JSON schema nests {depth} levels deep", param)
    if '"properties"' in text:
        widest = _widest_properties(schema)
        what = f"an object in {param}'s JSON schema has {widest} properties"
        _at_most(widest, MAX_SCHEMA_PROPERTIES, what, param)


def _widest_properties(schema: dict) -> int:
    """The most `properties` of any object schema, visiting objects and lists only."""
    widest = 0
    stack: list[dict | list] = [schema]
    while stack:
        node = stack.pop()
        values = node.values() if isinstance(node, dict) else node
        if isinstance(node, dict) and isinstance(node.get("properties"), dict):
            widest = max(widest, len(node["properties"]))
        stack.extend(v for v in values if isinstance(v, (dict, list)))
    return widest


_JSON_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def lark_grammar(spec: dict) -> str:
    """A Lark grammar (llguidance's dialect) for one of: json_object, json_schema, choice,
    regex, grammar — the keys `SamplingParams.structured_output` takes, vLLM's names. A choice
    is one terminal: a grammar rule per entry would pass the parser's limit of 2,000 items in
    a row at a few thousand entries, and one lexeme compiles 100,000 in about a second."""
    check_spec(spec)
    ((kind, value),) = spec.items()
    if kind == "json_object":
        return json_object_grammar()
    if kind == "json_schema":
        return LEADING_SPACE + "body: %json " + json.dumps(_compact(value))
    if kind == "choice":
        return LEADING_SPACE + "body: CHOICE\n" + _choice_terminal(value)
    if kind == "regex":
        return LEADING_SPACE + "body: /" + value.replace("/", "\\/") + "/"
    return value


def _choice_terminal(texts: list[str]) -> str:
    """One Lark terminal (one lexeme) matching exactly the texts, built by C loops alone: a
    worker thread running bytecode for each of 100,000 entries would hold the GIL in 5 ms
    turns against the engine thread, which takes it back after every tensor operation."""
    return "CHOICE: " + " | ".join(map(encode_basestring, texts))


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
    """Compiles grammars against one tokenizer on worker threads (llguidance builds them in Rust
    with the GIL released), so a large grammar never stalls the engine's steps; the vocabulary
    index is built once, lazily, on a worker too."""

    def __init__(
        self,
        tokenizer_json: Path,
        vocab_size: int,
        eos_token_id: int,
        timeout: float = COMPILE_TIMEOUT,
        workers: int = COMPILE_WORKERS,
    ):
        self.tokenizer_json = tokenizer_json
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(workers, "qthink-grammar")
        self._tokenizer_lock = threading.Lock()

    @property
    def _tokenizer(self):
        return _vocabulary_index(str(self.tokenizer_json), self.vocab_size, self.eos_token_id)

    def submit(self, spec: dict) -> "GrammarJob":
        """Check and compile `spec` on a worker: the engine thread does none of it (a server
        has checked it already, to name the request's field)."""
        job = GrammarJob(spec)
        job.future = self._pool.submit(self._run, job)
        return job

    def _run(self, job: "GrammarJob") -> "CompiledGrammar":
        self._vocabulary()  # built once, on first use; not the grammar's time
        job.started = time.monotonic()
        return self.compile(job.spec)

    def _vocabulary(self):
        with self._tokenizer_lock:
            return self._tokenizer

    def warm(self) -> None:
        """Build the vocabulary index now. It takes about 0.6 s and holds the GIL all along (it
        is built in Rust without releasing it), so a server builds it before serving: the first
        structured request would otherwise stall every stream for that long."""
        self._vocabulary()

    def compile(self, spec: dict) -> "CompiledGrammar":
        """Compile `spec` here and now, with its first mask; StructuredOutputError says why not."""
        import llguidance

        lark = lark_grammar(spec)
        grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        # Without verbose errors: llguidance's would append the parser state and the whole grammar.
        limits = llguidance.LLParserLimits(verbose_errors=False)
        matcher = llguidance.LLMatcher(self._vocabulary(), grammar, log_level=1, limits=limits)
        if matcher.is_error():
            raise StructuredOutputError(f"unsupported structured output: {matcher.get_error().strip()}")
        closers = self._closers if "json_object" in spec else None
        state = GrammarState(matcher, self.vocab_size, True, self.eos_token_id, closers)
        first = state.allowed()  # the first mask can take longer than the building
        if matcher.is_error():
            raise StructuredOutputError(f"unsupported structured output: {matcher.get_error().strip()}")
        return CompiledGrammar(state, first)

    def state(self, spec: dict, active: bool) -> "GrammarState":
        """A fresh matcher for `spec`, compiled on the calling thread."""
        return self.compile(spec).state(active)

    def close(self) -> None:
        """Drop queued compiles; one already running ends on its own."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    @cached_property
    def _closers(self) -> list[int]:
        """The single tokens that bring a JSON object nearer its end, most closing first."""
        ids = [self._tokenizer.tokenize_str(text) for text in CLOSING_TEXTS]
        return [t[0] for t in ids if len(t) == 1]


@lru_cache(maxsize=4)
def _vocabulary_index(tokenizer_json: str, vocab_size: int, eos_token_id: int):
    """llguidance's index of a vocabulary, built once per process (engines in one process share it)."""
    import llguidance

    text = Path(tokenizer_json).read_text()
    return llguidance.LLTokenizer(text, n_vocab=vocab_size, eos_token=eos_token_id, slices=[])


@dataclass
class GrammarJob:
    """One request's grammar on its way: `started` is set when a worker takes it up."""

    spec: dict
    future: "Future[CompiledGrammar]" = field(default_factory=Future)
    started: float | None = None

    def settled(self, timeout: float, now: float) -> bool:
        """Compiled, failed, or over its time."""
        return self.future.done() or self.overdue(timeout, now)

    def overdue(self, timeout: float, now: float) -> bool:
        return not self.future.done() and self.started is not None and now - self.started > timeout

    def result(self, timeout: float) -> "CompiledGrammar":
        """The compiled grammar (call once settled); StructuredOutputError if it failed or ran over."""
        if not self.future.done():
            raise StructuredOutputError(
                f"the grammar did not compile within {timeout:g} s; make it smaller or simpler",
                code="grammar_timeout",
            )
        return self.future.result()


class CompiledGrammar:
    """A compiled grammar in its first state, with its first mask: each sequence gets a copy."""

    def __init__(self, state: "GrammarState", first_allowed: torch.Tensor):
        self._state, self._first_allowed = state, first_allowed

    def state(self, active: bool) -> "GrammarState":
        s = self._state
        copy = GrammarState(s.matcher.deep_copy(), s.vocab_size, active, s.eos_id, s.closers)
        copy._allowed = self._first_allowed
        return copy


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
        self._allowed: torch.Tensor | None = None  # the mask of the current state, once computed

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
        self._allowed = None
        if not self.matcher.consume_token(token_id):
            raise StructuredOutputError(f"token {token_id} broke the grammar: {self.matcher.get_error()}")

    def allowed(self) -> torch.Tensor:
        """Bool [vocab] of the tokens the grammar accepts next (EOS once it is complete)."""
        if self._allowed is None:
            # What llguidance.torch's fill_next_token_bitmask does, without importing that module:
            # it compiles a kernel with torch.compile at import, which loads the whole of dynamo.
            self.matcher.unsafe_compute_mask_ptr(self.words.data_ptr(), self.words.numel() * 4)
            # Little-endian words: byte b of word w holds tokens 32w + 8b .. 32w + 8b + 7.
            self._allowed = BYTE_BITS[self.words.view(torch.uint8).long()].flatten()[: self.vocab_size]
        return self._allowed
