"""Command-line flags generated from EngineConfig's fields: each setting is defined once, there."""

import argparse
import json
import types
import typing
from dataclasses import fields

from qthink.config import EngineConfig

GROUP_TITLES = {
    "model": "model and weights",
    "memory": "memory and KV cache",
    "scheduler": "scheduling",
    "parallel": "parallelism",
    "generation": "sampling defaults",
    "parsing": "reasoning and special tokens",
}


def add_engine_arguments(
    parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None
) -> None:
    """One flag per EngineConfig field (`--max-model-len` for max_model_len), in titled groups.
    A flag left out keeps the field's default: nothing is restated here."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(EngineConfig):
        if not f.metadata.get("flag") or f.name in skip or (only is not None and f.name not in only):
            continue
        group_name = f.metadata["group"]
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(GROUP_TITLES[group_name])
        help_text = f.metadata["help"] + ("" if f.default is None else f" (default: {f.default})")
        groups[group_name].add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=argparse.SUPPRESS,
            help=help_text,
            **_value_kind(f.type, f.metadata.get("choices")),
        )


def engine_config_from_args(args: argparse.Namespace, **changes) -> EngineConfig:
    """The EngineConfig of the flags given (the others keep their defaults), plus `changes`."""
    given = {f.name: getattr(args, f.name) for f in fields(EngineConfig) if hasattr(args, f.name)}
    return EngineConfig.from_kwargs(**{**given, **changes})


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _value_kind(annotation, choices: tuple | None) -> dict:
    base = _base_type(annotation)
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if base is dict:
        return {"type": json_object, "metavar": "JSON"}
    kind: dict = {"type": base}
    if choices:
        kind["choices"] = [c for c in choices if c is not None]
    return kind


def _base_type(annotation):
    """int for `int | None`, and so on."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation
