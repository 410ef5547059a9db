"""Server-sent events, and engine output streams whose request errors surface before the response."""

import asyncio
import json
import logging
from typing import cast

import anyio
from fastapi.responses import JSONResponse, StreamingResponse

from qthink.errors import RequestError
from qthink.server.errors import APIError, bad_request
from qthink.server.metrics import RequestTimer
from qthink.server.request_log import note_output

# a proxy (nginx) that buffers or caches the stream would hold every token back
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
REQUEST_ID_HEADER = "x-request-id"
# How far (in tokens) a stream's client may fall behind the engine, beyond what the sockets
# hold, before its request is aborted: a client that stops reading cannot hold KV blocks.
STREAM_BACKLOG_TOKENS = 1024

log = logging.getLogger("qthink")


def event_stream(
    events,
    request_id: str | None = None,
    media_type: str = "text/event-stream",
    streams: "list[OutputStream] | tuple" = (),
):
    """A streamed response; its request id (for /v1/requests/{id}/end_thinking) in a header.
    It is cut off when one of `streams` (the engine outputs it shows) drops its slow client."""
    headers = {**SSE_HEADERS, **({REQUEST_ID_HEADER: request_id} if request_id else {})}
    return DroppableStream(events, list(streams), media_type=media_type, headers=headers)


class DroppableStream(StreamingResponse):
    """A streaming response that stops writing, even in the middle of a write that waits on a
    client that does not read, once one of its output streams has dropped that client."""

    def __init__(self, content, streams: "list[OutputStream]", **kwargs):
        super().__init__(content, **kwargs)
        self.streams = streams

    async def __call__(self, scope, receive, send) -> None:
        if not self.streams:
            return await super().__call__(scope, receive, send)
        async with anyio.create_task_group() as group:

            async def cut_off() -> None:
                await any_dropped(self.streams)
                group.cancel_scope.cancel()

            group.start_soon(cut_off)
            await super().__call__(scope, receive, send)
            group.cancel_scope.cancel()


def request_id_header(body: dict, request_id: str) -> JSONResponse:
    return JSONResponse(body, headers={REQUEST_ID_HEADER: request_id})


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def sse_done() -> str:
    return "data: [DONE]\n\n"


async def any_dropped(streams: "list[OutputStream]") -> None:
    """Return once one of `streams` has dropped its client."""
    waits = [asyncio.ensure_future(s.dropped.wait()) for s in streams]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


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
    backlog = getattr(server, "stream_backlog_tokens", STREAM_BACKLOG_TOKENS)
    return OutputStream(first, outputs, timer, backlog)


class StreamDropped(Exception):
    """The reader fell too far behind the engine; its request was aborted."""


class OutputStream:
    """One request's outputs, the first already received, timed for the latency metrics.

    A task takes every output from the engine as it comes; the reader gets the latest one
    (outputs are cumulative, so one it skipped is in the next). When the engine is more than
    `backlog` tokens ahead of what the reader took, the reader has stopped reading: the
    request is aborted (its KV blocks freed) and `dropped` is set. `aclose` aborts the
    request even when nobody has iterated yet (a later request of the same batch was refused)."""

    def __init__(self, first, rest, timer: RequestTimer, backlog: int = STREAM_BACKLOG_TOKENS):
        self.rest, self.timer, self.backlog = rest, timer, backlog
        self.latest, self.taken = first, 0
        self.done, self.error = first.finished, cast(Exception | None, None)
        self.dropped, self._new = asyncio.Event(), asyncio.Event()
        self._saw(first)
        self._pump = None if self.done else asyncio.ensure_future(self._take_outputs())

    def _saw(self, out) -> None:
        self.timer.saw(out)
        note_output(out)

    async def _take_outputs(self) -> None:
        try:
            async for out in self.rest:
                self._saw(out)
                self.latest = out
                self._new.set()
                if not out.finished and generated(out) - self.taken > self.backlog:
                    log.warning(
                        "request %s: its client fell %d tokens behind; request aborted",
                        out.request_id,
                        generated(out) - self.taken,
                    )
                    self.dropped.set()
                    await self.rest.aclose()  # aborts the request in the engine
                    return
        except Exception as e:  # handed to the reader, so its stream reports it
            self.error = e
        finally:
            self.done = True
            self._new.set()

    async def __aiter__(self):
        last = None
        try:
            while True:
                out = self.latest
                if out is not last:
                    last, self.taken = out, generated(out)
                    yield out
                    continue
                if self.error is not None:
                    raise self.error
                if self.dropped.is_set():
                    raise StreamDropped(f"the client fell over {self.backlog} tokens behind")
                if self.done:
                    return
                self._new.clear()
                await self._new.wait()
        finally:
            if not self.done and self._pump is not None:
                self._pump.cancel()  # the reader left: cancelling the engine stream aborts it

    async def aclose(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        await self.rest.aclose()


def generated(out) -> int:
    """Tokens a request has generated so far, over all its choices."""
    return sum(len(c.token_ids) for c in out.outputs)


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
    queue: asyncio.Queue = asyncio.Queue(maxsize=len(streams))  # a reader that stops stops them

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
