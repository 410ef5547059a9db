"""Tokenizer: `tokenizers` over tokenizer.json, the chat template in a jinja2 sandbox, streaming decode."""

import json
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as RustTokenizer

TEMPLATES_DIR = Path(__file__).parent / "templates"

THINK_START_ID = 151667
THINK_END_ID = 151668
IM_END_ID = 151645
TOOL_CALL_START_ID = 151657
TOOL_CALL_END_ID = 151658


class ChatTemplateError(ValueError):
    """The chat template is missing, unknown, or failed to render; the message says which."""


def shipped_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja"))


class Tokenizer:
    def __init__(self, backend: RustTokenizer, config: dict, chat_template: str | None):
        self.backend = backend
        self.config = config
        self.chat_template = chat_template
        self.eos_token = _token_text(config.get("eos_token")) or "<|im_end|>"
        self.pad_token = _token_text(config.get("pad_token")) or "<|endoftext|>"
        self.eos_token_id = backend.token_to_id(self.eos_token)
        self.pad_token_id = backend.token_to_id(self.pad_token)
        self._template = None

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, chat_template: str | None = None) -> "Tokenizer":
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
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return len(self)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

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
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        **template_kwargs,
    ) -> str | list[int]:
        """Render like transformers' apply_chat_template; ids when tokenize=True."""
        if self.chat_template is None:
            raise ChatTemplateError("this tokenizer has no chat template; pass chat_template=")
        if self._template is None:
            self._template = _environment().from_string(self.chat_template)
        context = dict(
            messages=[_normalise_message(m) for m in messages],
            tools=tools or None,
            add_generation_prompt=add_generation_prompt,
            bos_token=_token_text(self.config.get("bos_token")) or "",
            eos_token=self.eos_token,
            pad_token=self.pad_token,
        )
        context.update(template_kwargs)
        try:
            text = self._template.render(**context)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"the chat template failed to render: {e}") from None
        return self.encode(text) if tokenize else text


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
        self.ids.extend(token_ids)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=self.skip)
        after = decode(self.ids[self.prefix_offset :], skip_special_tokens=self.skip)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        delta = after[len(before) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += delta
        return delta


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _normalise_message(message: dict) -> dict:
    """OpenAI-shaped messages as the template expects them: text parts joined, tool-call
    arguments given as JSON strings parsed to objects (as vLLM does)."""
    message = dict(message)
    content = message.get("content")
    if isinstance(content, list):
        message["content"] = "".join(p.get("text", "") for p in content if p.get("type", "text") == "text")
    elif content is None:
        message["content"] = ""
    if message.get("tool_calls"):
        message["tool_calls"] = [_parse_arguments(call) for call in message["tool_calls"]]
    return message


def _parse_arguments(call: dict) -> dict:
    call = dict(call)
    function = dict(call.get("function") or {})
    if isinstance(function.get("arguments"), str):
        try:
            function["arguments"] = json.loads(function["arguments"])
        except json.JSONDecodeError:
            pass
        call["function"] = function
    return call


def _resolve_template(name_or_text: str) -> str:
    if (TEMPLATES_DIR / f"{name_or_text}.jinja").is_file():
        return (TEMPLATES_DIR / f"{name_or_text}.jinja").read_text()
    if "{" in name_or_text:
        return name_or_text
    path = Path(name_or_text).expanduser()
    if path.is_file():
        return path.read_text()
    names = ", ".join(shipped_templates())
    raise ChatTemplateError(f"unknown chat template {name_or_text!r}: give a file, a template or {names}")


def _checkpoint_template(model_dir: Path, config: dict) -> str | None:
    file = model_dir / "chat_template.jinja"
    if file.is_file():
        return file.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t["name"]: t["template"] for t in template}
        return named.get("default") or next(iter(named.values()), None)
    return template
