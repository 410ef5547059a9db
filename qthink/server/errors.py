"""OpenAI-style error bodies, and the exceptions that map to them."""

from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse

from qthink.errors import RequestError


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def bad_request(error: RequestError, prompt_param: str = "prompt") -> APIError:
    """The 400 for a request the engine refused; the engine calls the prompt `prompt`, a chat
    request's prompt is its `messages`."""
    param = prompt_param if error.param == "prompt" else error.param
    return APIError(400, error.message, param=param, code=error.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | int | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, kind, param, code), status_code=status)


def validation_message(errors: Sequence[Any], body=None) -> tuple[str, str | None]:
    """One readable sentence from pydantic's errors, and the offending parameter."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return json_message(first, body), None
    if first.get("type") == "unsupported_field":
        return first["msg"], first["ctx"]["field"]
    loc = [str(p) for p in first.get("loc", []) if p != "body"]
    param = ".".join(loc) or None
    return (f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid")), param


def json_message(error: dict, body) -> str:
    """Why the body is not JSON, and where: line and column, as an editor counts them."""
    reason = (error.get("ctx") or {}).get("error") or "not valid JSON"
    if "surrogate" in reason:
        return f"the request body is not valid JSON text: {reason}"
    loc = error.get("loc") or ()
    pos = loc[-1] if loc and isinstance(loc[-1], int) else None
    if pos is None or not isinstance(body, str):
        return f"the request body is not valid JSON: {reason}"
    line = body.count("\n", 0, pos) + 1
    column = pos - (body.rfind("\n", 0, pos) + 1) + 1
    return f"the request body is not valid JSON: {reason} at line {line}, column {column} (character {pos})"
