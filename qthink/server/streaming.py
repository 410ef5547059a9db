"""Server-sent events, and engine output streams whose request errors surface before the response."""

import asyncio
import json

from fastapi.responses import JSONResponse, StreamingResponse

from qthink.errors import RequestError
from qthink.server.errors import APIError, bad_request
from qthink.server.metrics import RequestTimer
from qthink.server.request_log import note_output

# a proxy (nginx) that buffers or caches the stream would hold every token back
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
REQUEST_ID_HEADER = "x-request-id"


def event_stream(events, request_id: str | None = None, media_type: str = "text/event-stream"):
    """A streamed response; its request id (for /v1/requests/{id}/end_thinking) in a header."""
    headers = {**SSE_HEADERS, **({REQUEST_ID_HEADER: request_id} if request_id else {})}
    return StreamingResponse(events, media_type=media_type, headers=headers)


def request_id_header(body: dict, request_id: str) -> JSONResponse:
    return JSONResponse(body, headers={REQUEST_ID_HEADER: request_id})


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def sse_done() -> str:
    return "data: [DONE]\n\n"


async def stream_outputs(
    server, prompt, params, request_id: str | None = None, prompt_param: str = "prompt"
) -> "OutputStream":
    """Submit the request and wait for its first output, so a refused request (too long,
    bad grammar) is a 400 rather than a broken stream; `prompt_param` names the field the
    prompt came from (`messages` for chat) in that error."""
    fmt = server.engine.thinking_format
    thinking = not isinstance(prompt, str) and fmt.prompt_opens_thinking(prompt)
    timer = RequestTimer(server.metrics, fmt, thinking)
    outputs = server.engine.generate(prompt, params, request_id)
    try:
        first = await anext(outputs)
    except RequestError as e:
        await outputs.aclose()
        raise bad_request(e, prompt_param) from None
    return OutputStream(first, outputs, timer)


class OutputStream:
    """One request's outputs, the first already received, timed for the latency metrics;
    `aclose` aborts the request even when nobody has iterated yet (a later request of the
    same batch was refused)."""

    def __init__(self, first, rest, timer: RequestTimer):
        self.first, self.rest, self.timer = first, rest, timer

    async def __aiter__(self):
        self.timer.saw(self.first)
        note_output(self.first)
        yield self.first
        async for out in self.rest:
            self.timer.saw(out)
            note_output(out)
            yield out

    async def aclose(self) -> None:
        await self.rest.aclose()


async def last_output(outputs):
    """Run a stream to its end; the final, complete output. A request that failed inside
    the engine (the engine itself goes on) is a 500 carrying the engine's message."""
    final = None
    async for out in outputs:
        final = out
    if final is not None and final.error:
        raise APIError(500, final.error, kind="server_error", code="engine_error")
    return final


async def merged(streams):
    """(position, output) from several requests' streams as the outputs come. Leaving early
    (the client went away) cancels the readers, which aborts every request."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream) -> None:
        try:
            async for out in stream:
                await queue.put((i, out))
            await queue.put((i, None))
        except Exception as e:  # handed to the reader, so the stream reports it
            await queue.put((i, e))

    readers = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_streams = len(readers)
        while open_streams:
            i, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            if item is None:
                open_streams -= 1
            else:
                yield i, item
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def unless_disconnected(request, work):
    """Await `work` (the whole answer of a non-streamed request) while listening for the
    client to leave: if it goes first (a timeout, a closed tab), cancelling `work` aborts
    its requests, so a long thinking run no longer holds the engine for nobody."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise ClientGone()
    finally:
        for pending in (task, gone):
            pending.cancel()
        await asyncio.gather(task, gone, return_exceptions=True)


async def _disconnect(request) -> None:
    # the body is already read, so the next message is the disconnect; Request.is_disconnected
    # cannot be polled instead: behind an http middleware it never reports one
    while (await request.receive())["type"] != "http.disconnect":
        pass
