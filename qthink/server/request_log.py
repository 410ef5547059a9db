"""One log line per HTTP request, as uvicorn and vLLM write them: client, method and path, status,
prompt and completion tokens (for requests that ran the model) and the time to the last byte."""

import contextvars
import logging
import time

log = logging.getLogger("qthink.requests")
_usage: contextvars.ContextVar[dict | None] = contextvars.ContextVar("qthink_request_usage", default=None)


def note_output(out) -> None:
    """Record a request's latest engine output (a RequestOutput) for its log line."""
    usage = _usage.get()
    if usage is not None:
        usage["prompt"] = len(out.prompt_token_ids or [])
        usage["completion"] = sum(len(c.token_ids) for c in out.outputs)


class RequestLog:
    """ASGI middleware: logs each HTTP request once its response has been sent (or broken off)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, usage, status = time.perf_counter(), {}, [0]
        token = _usage.set(usage)

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            _usage.reset(token)
            log.info(line(scope, status[0], usage, time.perf_counter() - start))


def line(scope, status: int, usage: dict, seconds: float) -> str:
    client = scope.get("client")
    path = scope.get("path", "") + (f"?{scope['query_string'].decode()}" if scope.get("query_string") else "")
    text = f'{client[0] if client else "-"} "{scope.get("method")} {path}" {status or "disconnected"}'
    if usage:
        text += f", {usage['prompt']} prompt + {usage['completion']} completion tokens"
    return text + f", {seconds:.2f} s"
