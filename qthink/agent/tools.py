"""Tools the agent can call: a `Tool` base, `@register_tool`, and plain functions with a derived schema."""

import abc
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

import jsonschema

TOOL_REGISTRY: dict[str, type["Tool"]] = {}

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


class ToolError(Exception):
    """A call the tool refused (bad arguments); its message goes back to the model."""


class Tool(abc.ABC):
    """One callable tool: `name`, `description`, JSON-schema `parameters`, and `call(args) -> str`."""

    name: str = ""
    description: str = ""
    parameters: dict = {"type": "object", "properties": {}}

    def __init__(self, cfg: dict | None = None):
        self.cfg = cfg or {}

    @abc.abstractmethod
    def call(self, params: dict) -> Any:
        """Run the tool on validated parameters; the result is returned to the model as text."""

    def schema(self) -> dict:
        """The OpenAI `tools` entry for this tool."""
        function = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": function}

    def validate(self, params: dict) -> None:
        try:
            jsonschema.validate(params, self.parameters)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "arguments"
            raise ToolError(f"invalid arguments for {self.name} ({where}): {exc.message}") from None

    def close(self) -> None:  # noqa: B027 - an optional hook: most tools hold nothing
        """Release what the tool holds (processes, kernels); the base holds nothing."""


def register_tool(name_or_obj=None, *, description: str | None = None):
    """Register a `Tool` subclass (`@register_tool('name')`) or turn a function into one
    (`@register_tool` / `@register_tool('name')` on a plain function)."""

    def wrap(obj, name=None):
        if inspect.isclass(obj) and issubclass(obj, Tool):
            obj.name = name or obj.name or obj.__name__
            TOOL_REGISTRY[obj.name] = obj
            return obj
        tool = function_tool(obj, name=name, description=description)
        TOOL_REGISTRY[tool.name] = type(tool)
        return obj

    if callable(name_or_obj) and not isinstance(name_or_obj, str):
        return wrap(name_or_obj)
    return lambda obj: wrap(obj, name_or_obj)


def function_tool(fn: Callable, name: str | None = None, description: str | None = None) -> Tool:
    """A `Tool` around a plain Python function, its schema read from type hints and docstring."""
    summary, param_docs = _parse_docstring(inspect.getdoc(fn) or "")
    params = function_parameters(fn, param_docs)
    attrs = {
        "name": name or fn.__name__,
        "description": description or summary,
        "parameters": params,
        "call": lambda self, args: fn(**args),
    }
    return type(f"FunctionTool_{attrs['name']}", (Tool,), attrs)()


def function_parameters(fn: Callable, param_docs: dict[str, str] | None = None) -> dict:
    """JSON schema of a function's keyword arguments; those without a default are required."""
    hints = typing.get_type_hints(fn)
    properties, required = {}, []
    for pname, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        prop = type_schema(hints.get(pname, Any))
        if param_docs and pname in param_docs:
            prop["description"] = param_docs[pname]
        if param.default is inspect.Parameter.empty:
            required.append(pname)
        else:
            prop["default"] = param.default
        properties[pname] = prop
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def type_schema(hint) -> dict:
    """JSON schema for one type hint: scalars, list[X], dict, Literal, Optional/unions."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (list, tuple, set):
        return {"type": "array", "items": type_schema(args[0])} if args else {"type": "array"}
    if origin is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [{"type": "null"} if a is type(None) else type_schema(a) for a in args]}
    return {}


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The summary paragraph and per-parameter text from Google (`name: text`) or
    Sphinx (`:param name: text`) style docstrings."""
    summary = doc.split("\n\n")[0].replace("\n", " ").strip()
    params = {}
    for match in re.finditer(r"^\s*:param\s+(\w+):\s*(.+)$", doc, re.MULTILINE):
        params[match.group(1)] = match.group(2).strip()
    args_section = re.search(r"^\s*(?:Args|Arguments|Parameters):\s*\n((?:\s+.+\n?)+)", doc, re.MULTILINE)
    if args_section:
        for match in re.finditer(r"^\s+(\w+)(?:\s*\([^)]*\))?:\s*(.+)$", args_section.group(1), re.MULTILINE):
            params.setdefault(match.group(1), match.group(2).strip())
    return summary, params


def result_text(value: Any) -> str:
    """A tool's return value as the text the model reads."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except TypeError:
        return str(value)


def run_tool(tool: Tool, arguments: str | dict) -> str:
    """Parse, validate and run one call; any failure becomes an error text for the model."""
    try:
        params = json.loads(arguments or "{}") if isinstance(arguments, str) else dict(arguments)
    except json.JSONDecodeError as exc:
        return f"Error: the arguments of {tool.name} are not valid JSON ({exc.msg})."
    if not isinstance(params, dict):
        return f"Error: the arguments of {tool.name} must be a JSON object."
    try:
        tool.validate(params)
        return result_text(tool.call(params))
    except ToolError as exc:
        return f"Error: {exc}"
    except Exception as exc:  # noqa: BLE001 — a tool's failure is information for the model
        return f"Error: {tool.name} raised {type(exc).__name__}: {exc}"
