"""OpenAI-style error bodies, and the exceptions that map to them."""

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


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One readable sentence from pydantic's errors, and the offending parameter."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", []) if p != "body"]
    param = ".".join(loc) or None
    return (f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid")), param
