"""BFCL's AST rules for function calls: names, required params, types, allowed values, any order.

A call is `{"name": {"param": value}}`; the ground truth gives, per param, the list of allowed
values, where `""` marks an optional param that may be left out. Strings compare without case,
spaces or `,./-_*^`; an int passes for a float; parallel calls match in any order.
"""

import re
from typing import Any

PYTHON_TYPES: dict[str, type[Any]] = {
    "string": str,
    "integer": int,
    "float": float,
    "number": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "object": dict,
    "any": str,
}
NO_CALL_CATEGORIES = ("irrelevance", "live_irrelevance")


def standardize(text: str) -> str:
    """ "April 1, 2024", "april 1 2024" and "April-1-2024" are the same argument."""
    return re.sub(r"[ ,./\-_*^]", "", text).lower().replace("'", '"')


def _normalized(value):
    if isinstance(value, str):
        return standardize(value)
    if isinstance(value, list | tuple):
        return [_normalized(v) for v in value]
    return value


def _type_ok(value, spec: dict, allowed: list) -> bool:
    expected = PYTHON_TYPES.get(spec.get("type", "any"), str)
    if type(value) is expected:
        inner = spec.get("items", {}).get("type") if expected is list else None
        if inner in ("array", "tuple", "dict", "object", None):
            return True
        inner_type = PYTHON_TYPES.get(inner, str)
        return all(type(v) is inner_type or (inner_type is float and type(v) is int) for v in value)
    # a variable name given where a value is expected: BFCL writes those answers as strings
    typed = [a for a in allowed if a != ""]
    return bool(typed) and type(value) is type(typed[0])


def _dict_ok(value: dict, options: list) -> bool:
    for option in options:
        if not isinstance(option, dict):
            continue
        keys_ok = all(k in option and _normalized(v) in _normalized(option[k]) for k, v in value.items())
        missing_ok = all(k in value or "" in allowed for k, allowed in option.items())
        if keys_ok and missing_ok:
            return True
    return False


def _value_ok(value, spec: dict, allowed: list) -> bool:
    if isinstance(value, dict):
        return _dict_ok(value, allowed)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return any(
            isinstance(option, list)
            and len(option) == len(value)
            and all(_dict_ok(v, [o]) for v, o in zip(value, option))
            for option in allowed
        )
    if isinstance(value, str | list):
        return _normalized(value) in [_normalized(a) for a in allowed if type(a) is type(value)]
    return value in allowed


def call_error(function: dict, call: dict, expected: dict) -> str | None:
    """Why one call fails the ground truth `{name: {param: [allowed]}}`, or None when it passes."""
    name, allowed_by_param = next(iter(expected.items()))
    if name not in call:
        return f"expected a call to {name}"
    args, params = call[name], function.get("parameters", {})
    properties = params.get("properties", {})
    for param in params.get("required", []):
        if param not in args:
            return f"missing required parameter {param!r}"
    for param, value in args.items():
        if param not in properties or param not in allowed_by_param:
            return f"unexpected parameter {param!r}"
        spec, allowed = properties[param], allowed_by_param[param]
        if spec.get("type") in ("float", "number") and type(value) is int:
            value = float(value)
        if not _type_ok(value, spec, allowed):
            return f"wrong type for {param!r}: {type(value).__name__}"
        if not _value_ok(value, spec, allowed):
            return f"value {value!r} for {param!r} is not one of {allowed!r}"
    for param, allowed in allowed_by_param.items():
        if param not in args and "" not in allowed:
            return f"missing parameter {param!r}"
    return None


def calls_error(
    functions: list[dict], calls: list[dict], ground_truth: list[dict], category: str
) -> str | None:
    """Why the calls fail the item, or None when they pass; parallel calls match in any order."""
    if category in NO_CALL_CATEGORIES:
        return f"called {len(calls)} function(s) where none fits" if calls else None
    if category == "live_relevance":
        return None if calls else "no function called"
    if len(calls) != len(ground_truth):
        return f"{len(calls)} call(s), expected {len(ground_truth)}"
    by_name = {f["name"]: f for f in functions}
    unmatched = list(range(len(calls)))
    for expected in ground_truth:
        function = by_name.get(next(iter(expected)), {})
        match = next((i for i in unmatched if call_error(function, calls[i], expected) is None), None)
        if match is None:
            errors = [call_error(function, calls[i], expected) for i in unmatched]
            return "; ".join(e for e in errors if e)
        unmatched.remove(match)
    return None
