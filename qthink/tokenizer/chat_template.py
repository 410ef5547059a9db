"""Chat templates: finding one (shipped, file, checkpoint) and rendering it in a jinja2 sandbox
with transformers' settings, on messages normalised to what templates expect."""

import json
import secrets
import string
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from qthink.errors import RequestError

TEMPLATES_DIR = Path(__file__).parents[1] / "templates"

# Older and newer names clients send the thinking of an assistant turn under; templates read the first.
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")


class ChatTemplateError(RequestError):
    """The chat template is missing, unknown, or failed to render; the message says which."""


def shipped_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja"))


def nonce() -> str:
    """Random letters no input can predict, so no input can forge a placeholder or tag."""
    return "".join(secrets.choice(string.ascii_letters) for _ in range(20))


def render(
    template: str, data: dict, variables: dict, add_generation_prompt: bool, continue_final: bool | str
) -> str:
    """The template over `data` (messages, tools, documents, kwargs) and the special-token
    `variables`; with continue_final, cut right after the final message's text."""
    messages = data["messages"]
    tag = nonce() if continue_final else ""
    if continue_final:
        messages = _tag_final_message(messages, continue_final, tag)
    context = {**variables, **data["kwargs"]}
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
        raise ChatTemplateError("continue_final_message: the chat template does not render the final message")
    return text[: text.rindex(tag)]


def template_data(messages: list[dict], tools, documents, kwargs: dict) -> dict:
    """What a template sees, as plain JSON-like data with messages normalised."""
    return dict(
        messages=[normalise_message(m) for m in plain(messages)],
        tools=plain(tools) or None,
        documents=plain(documents),
        kwargs=plain(kwargs),
    )


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


def plain(value):
    """JSON-like data only, so nothing the template sees carries methods (pydantic models are dumped)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base in (str, int, float):  # subclasses such as enums lose their extra methods
        if isinstance(value, base):
            return base(value) if base is not str else str.__str__(value)
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if callable(getattr(value, "model_dump", None)):
        return plain(value.model_dump())
    raise ChatTemplateError(f"chat template input must be JSON-like data, not {type(value).__name__}")


def normalise_message(message: dict) -> dict:
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


def resolve_template(name_or_text: str) -> str:
    """A shipped template's name, a template string, or a .jinja path -> the template text."""
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


def checkpoint_template(model_dir: Path, config: dict) -> str | None:
    """The checkpoint's own template: chat_template.jinja, then tokenizer_config.json's."""
    file = model_dir / "chat_template.jinja"
    if file.is_file():
        return file.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t["name"]: t["template"] for t in template}
        return named.get("default") or next(iter(named.values()), None)
    return template
