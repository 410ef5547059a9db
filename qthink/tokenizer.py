"""Tokenizer: `tokenizers` over tokenizer.json, the chat template in a jinja2 sandbox, streaming decode."""

import json
import re
import secrets
import string
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cached_property, lru_cache
from pathlib import Path

import jinja2
import jinja2.nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from tokenizers import Tokenizer as RustTokenizer

from qthink.errors import RequestError

TEMPLATES_DIR = Path(__file__).parent / "templates"

IM_END_ID = 151645
TOOL_CALL_START_ID = 151657
TOOL_CALL_END_ID = 151658

# Roles whose text a person or a tool wrote: every added token typed there (`</think>`, `<tool_call>`,
# not only the special ones) is text; assistant turns keep theirs, which the template parses.
TYPED_ROLES = ("system", "user", "tool")

# Older and newer names clients send the thinking of an assistant turn under; templates read the first.
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")


class ChatTemplateError(RequestError):
    """The chat template is missing, unknown, or failed to render; the message says which."""


def shipped_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja"))


class Tokenizer:
    """The checkpoint's tokenizer and chat template, with transformers' method names and results."""

    def __init__(self, backend: RustTokenizer, config: dict, chat_template: str | None):
        self.backend = backend
        self.config = config
        self.chat_template = chat_template
        self.eos_token = _token_text(config.get("eos_token")) or "<|im_end|>"
        self.pad_token = _token_text(config.get("pad_token")) or "<|endoftext|>"
        self.eos_token_id = backend.token_to_id(self.eos_token)
        self.pad_token_id = backend.token_to_id(self.pad_token)
        added = backend.get_added_tokens_decoder()
        self.special_token_ids = {t.content: i for i, t in added.items() if t.special}
        longest_first = sorted(self.special_token_ids, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, longest_first)) or "(?!)")
        self._added_texts = [t.content for t in added.values()]

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, chat_template: str | None = None) -> "Tokenizer":
        """Load tokenizer.json; `chat_template` is a shipped name, a .jinja path or a template string,
        and defaults to the checkpoint's own (chat_template.jinja, then tokenizer_config.json)."""
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir} has no tokenizer.json")
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template = (
            _resolve_template(chat_template) if chat_template else _checkpoint_template(model_dir, config)
        )
        return cls(RustTokenizer.from_file(str(path)), config, template)

    def __len__(self) -> int:
        """Every token id the tokenizer knows, added tokens included (the model's embedding may be larger)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """The base vocabulary without added tokens, as transformers defines it."""
        return self.backend.get_vocab_size(with_added_tokens=False)

    @cached_property
    def _text_backend(self) -> RustTokenizer:
        """A copy that reads special-token text as plain text; a copy because the switch is not per call."""
        backend = RustTokenizer.from_str(self.backend.to_str())
        backend.encode_special_tokens = True
        return backend

    def encode(
        self, text: str, add_special_tokens: bool = False, split_special_tokens: bool = False
    ) -> list[int]:
        """Token ids of `text`; with split_special_tokens, `<|im_start|>` and the like become plain text."""
        backend = self._text_backend if split_special_tokens else self.backend
        return backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        return [self.backend.id_to_token(i) for i in ids]

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def apply_chat_template(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        documents: list[dict] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool | str = False,
        tokenize: bool = True,
        allow_special_tokens_in_content: bool = False,
        **template_kwargs,
    ) -> str | list[int]:
        """Render like transformers' apply_chat_template; ids when tokenize=True.

        Only the template writes control tokens: special-token text inside messages, tools or
        template arguments is encoded as plain text unless allow_special_tokens_in_content."""
        if continue_final_message and add_generation_prompt:
            raise ChatTemplateError("continue_final_message and add_generation_prompt exclude each other")
        template = _resolve_template(chat_template) if chat_template else self.chat_template
        if template is None:
            raise ChatTemplateError("this tokenizer has no chat template; pass chat_template=")
        data = dict(
            messages=[_normalise_message(m) for m in _plain(messages)],
            tools=_plain(tools) or None,
            documents=_plain(documents),
            kwargs=_plain(template_kwargs),
        )
        typed: dict[str, str] = {}
        if tokenize and not allow_special_tokens_in_content:
            data["messages"] = [self._shield_typed(m, typed) for m in data["messages"]]
        text = self._render(template, data, add_generation_prompt, continue_final_message)
        if not tokenize:
            return text
        if any(placeholder not in text for placeholder in typed):
            raise ChatTemplateError(
                "the chat template rewrites message text that holds control-token text such as "
                "</think>; remove it, or allow it with allow_special_tokens_in_content=True"
            )
        if allow_special_tokens_in_content or not _any_string(data, self._special_re.search):
            return self._encode_typed(text, typed)
        return self._encode_guarded(
            template, data, text, add_generation_prompt, continue_final_message, typed
        )

    def _shield_typed(self, message: dict, typed: dict[str, str]) -> dict:
        """Content of a typed role that holds added-token text goes through the template as a
        placeholder of letters, so the template cannot read control tokens into it."""
        content = message["content"]
        if message.get("role") not in TYPED_ROLES or not any(t in content for t in self._added_texts):
            return message
        placeholder = _nonce()
        typed[placeholder] = content
        return {**message, "content": placeholder}

    @cached_property
    def _all_text_backend(self) -> RustTokenizer:
        """A copy that reads the text of every added token, special or not, as plain text."""
        spec = json.loads(self.backend.to_str())
        for token in spec.get("added_tokens", []):
            token["special"] = True  # encode_special_tokens only splits tokens marked special
        backend = RustTokenizer.from_str(json.dumps(spec))
        backend.encode_special_tokens = True
        return backend

    def _encode_typed(
        self, text: str, typed: dict[str, str], split_special_tokens: bool = False
    ) -> list[int]:
        if not typed:
            return self.encode(text, split_special_tokens=split_special_tokens)
        ids: list[int] = []
        for piece in re.split("(" + "|".join(typed) + ")", text):
            if piece in typed:
                ids += self._all_text_backend.encode(typed[piece], add_special_tokens=False).ids
            elif piece:
                ids += self.encode(piece, split_special_tokens=split_special_tokens)
        return ids

    def _render(
        self, template: str, data: dict, add_generation_prompt: bool, continue_final: bool | str
    ) -> str:
        messages = data["messages"]
        tag = _nonce() if continue_final else ""
        if continue_final:
            messages = _tag_final_message(messages, continue_final, tag)
        context = {**self._special_token_variables(), **data["kwargs"]}
        context.update(
            messages=messages,
            tools=data["tools"],
            documents=data["documents"],
            add_generation_prompt=add_generation_prompt,
        )
        try:
            text = _compile(template).render(**context)
        except Exception as e:  # untrusted template on untrusted input: any failure is a bad request
            raise ChatTemplateError(f"the chat template failed to render: {e}") from None
        if not continue_final:
            return text
        if tag not in text:
            raise ChatTemplateError(
                "continue_final_message: the chat template does not render the final message"
            )
        return text[: text.rindex(tag)]

    def _special_token_variables(self) -> dict:
        names = ("bos_token", "eos_token", "unk_token", "pad_token")
        values = {name: _token_text(self.config.get(name)) for name in names}
        values.update(eos_token=self.eos_token, pad_token=self.pad_token)
        return {name: value for name, value in values.items() if value is not None}

    def _encode_guarded(
        self,
        template: str,
        data: dict,
        text: str,
        add_generation_prompt: bool,
        continue_final: bool | str,
        typed: dict[str, str],
    ) -> list[int]:
        """Render again with the special-token text in the inputs swapped for unguessable placeholders;
        every control token left in the rendering was then written by the template itself."""
        nonce = _nonce()
        placeholder_re = re.compile(f"{nonce}(\\d+){nonce}")
        guard = lambda s: self._special_re.sub(lambda m: f"{nonce}{self.special_token_ids[m[0]]}{nonce}", s)
        guarded = self._render(template, _map_strings(data, guard), add_generation_prompt, continue_final)
        restore = lambda s: placeholder_re.sub(lambda m: self.backend.id_to_token(int(m[1])), s)
        if restore(guarded) != text:
            raise ChatTemplateError(
                "the chat template rewrites message text that holds special-token text such as <|im_start|>; "
                "remove it, or allow it with allow_special_tokens_in_content=True"
            )
        ids: list[int] = []
        for i, piece in enumerate(re.split(f"({self._special_re.pattern})", guarded)):
            if i % 2:
                ids.append(self.special_token_ids[piece])
            elif piece:
                ids += self._encode_typed(restore(piece), typed, split_special_tokens=True)
        return ids


class IncrementalDetokenizer:
    """Decode token by token; text is released only once its UTF-8 characters are complete.
    Each push decodes a short window (prefix/read offsets), not the whole sequence."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
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


class _GenerationBlock(Extension):
    """transformers' `{% generation %}` marks assistant text for training masks; rendering ignores it."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


class _TemplateNamespace(Namespace):
    """`namespace()` that refuses underscore names, so templates cannot shadow object internals."""

    def __init__(*args, **kwargs):
        self, *rest = args
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check(name)
        Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} may not start with '_'")


class _TemplateDict:
    """`dict()` for templates without handing them the dict type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    """The sandbox with transformers' settings, so templates written for it render the same."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols]
    )

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes HTML characters, which would change the prompt
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env.filters["tojson"] = tojson
    env.globals.update(
        raise_exception=raise_exception,
        strftime_now=lambda fmt: datetime.now().strftime(fmt),
        namespace=_TemplateNamespace,
        dict=_TemplateDict(),
    )
    return env


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the chat template does not parse: {e}") from None


def _nonce() -> str:
    """Random letters no input can predict, so no input can forge a placeholder or tag."""
    return "".join(secrets.choice(string.ascii_letters) for _ in range(20))


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _plain(value):
    """JSON-like data only, so nothing the template sees carries methods (pydantic models are dumped)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base in (str, int, float):  # subclasses such as enums lose their extra methods
        if isinstance(value, base):
            return base(value) if base is not str else str.__str__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    raise ChatTemplateError(f"chat template input must be JSON-like data, not {type(value).__name__}")


def _map_strings(value, change: Callable[[str], str]):
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, change) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, change) for v in value]
    return value


def _any_string(value, test: Callable[[str], object]) -> bool:
    if isinstance(value, str):
        return bool(test(value))
    if isinstance(value, dict):
        return any(_any_string(v, test) for v in value.values())
    if isinstance(value, list):
        return any(_any_string(v, test) for v in value)
    return False


def _normalise_message(message: dict) -> dict:
    """OpenAI-shaped messages as the template expects them: None fields dropped (content becomes ""),
    text parts joined, reasoning under its standard name, tool-call arguments that arrive as JSON
    strings parsed to objects (as vLLM does), and the developer role read as system."""
    if not isinstance(message, dict):
        raise ChatTemplateError(f"a chat message must be an object with a role, not {message!r}")
    message = {key: value for key, value in message.items() if value is not None}
    message["content"] = _content_text(message.get("content", ""))
    if message.get("role") == "developer":
        message["role"] = "system"
    reasoning = next((message[k] for k in REASONING_FIELDS if isinstance(message.get(k), str)), None)
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if message.get("tool_calls"):
        message["tool_calls"] = [_parse_arguments(call) for call in message["tool_calls"]]
    return message


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ChatTemplateError(f"message content must be a string or a list of parts, not {content!r}")
    kinds = {part.get("type", "text") if isinstance(part, dict) else type(part).__name__ for part in content}
    if kinds - {"text"}:
        raise ChatTemplateError(f"only text content parts are supported, got {sorted(kinds - {'text'})}")
    # vLLM joins text parts with newlines
    return "\n".join(part.get("text", "") for part in content)


def _parse_arguments(call: dict) -> dict:
    call = dict(call)
    function = call.get("function")
    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
        try:
            call["function"] = {**function, "arguments": json.loads(function["arguments"])}
        except json.JSONDecodeError:
            pass  # not JSON: the template shows the string as the client sent it
    return call


def _tag_final_message(messages: list[dict], field: bool | str, tag: str) -> list[dict]:
    """Append `tag` to the final message so the rendering can be cut right after its text."""
    field = field if isinstance(field, str) else "content"
    if not messages or not isinstance(messages[-1].get(field), str):
        raise ChatTemplateError(f"continue_final_message: the final message has no {field!r} to continue")
    return [*messages[:-1], {**messages[-1], field: messages[-1][field] + tag}]


def _resolve_template(name_or_text: str) -> str:
    if name_or_text in shipped_templates():
        return (TEMPLATES_DIR / f"{name_or_text}.jinja").read_text()
    if "{" in name_or_text:
        return name_or_text
    path = Path(name_or_text).expanduser()
    if path.is_file():
        return path.read_text()
    names = ", ".join(shipped_templates())
    raise ChatTemplateError(
        f"unknown chat template {name_or_text!r}: give a shipped name ({names}), a .jinja file or a template"
    )


def _checkpoint_template(model_dir: Path, config: dict) -> str | None:
    file = model_dir / "chat_template.jinja"
    if file.is_file():
        return file.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t["name"]: t["template"] for t in template}
        return named.get("default") or next(iter(named.values()), None)
    return template
