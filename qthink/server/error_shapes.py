"""Error bodies in each wire protocol's own shape: OpenAI's, Anthropic's, Ollama's."""

from fastapi.responses import JSONResponse

from qthink.server.errors import error_response

ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def protocol_of(path: str) -> str:
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/api/"):
        return "ollama"
    return "openai"


def shaped_error(
    path: str,
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | int | None = None,
) -> JSONResponse:
    """The error for a request to `path`, as that protocol's clients parse it."""
    protocol = protocol_of(path)
    if protocol == "anthropic":
        error = {"type": ANTHROPIC_TYPES.get(status, "api_error"), "message": message}
        return JSONResponse({"type": "error", "error": error}, status_code=status)
    if protocol == "ollama":
        return JSONResponse({"error": message}, status_code=status)
    return error_response(status, message, kind, param, code)
