"""AsyncEngine: the engine loop on its own thread, streamed to asyncio callers."""

import asyncio
import concurrent.futures
import logging
import queue
import threading
import uuid
from collections.abc import AsyncIterator

from qthink.engine.engine import LLMEngine
from qthink.engine.outputs import RequestOutput
from qthink.engine.rank_supervisor import RankDiedError
from qthink.engine.sampling_params import SamplingParams

log = logging.getLogger("qthink")


class EngineDeadError(RuntimeError):
    """The engine thread has stopped; no request can be served."""


class AsyncEngine:
    """All engine state is touched by one thread only; callers talk to it through a command
    queue, so a long step never blocks the event loop and no lock guards the hot path."""

    def __init__(self, model: str, **kwargs):
        self.engine = LLMEngine(model, **kwargs)
        self.engine.grammars.warm()  # before serving: building it stalls every thread
        self.tokenizer = self.engine.tokenizer
        self.thinking_format = self.engine.thinking_format
        self.model_config = self.engine.model_config
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopping = threading.Event()
        self.engine.wakeup = lambda: self._commands.put((_nothing, (), None))  # a grammar is done
        self.failure: RankDiedError | None = None  # why the engine stopped, if not asked to
        if self.engine.ranks:
            self.engine.ranks.on_death.append(self._wake)
        self._thread = threading.Thread(target=self._loop, name="qthink-engine", daemon=True)
        self._thread.start()

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    async def generate(
        self, prompt: str | list[int], params: SamplingParams | None = None, request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Yield cumulative outputs as tokens arrive; the last one has finished=True. Leaving
        the iteration early (a client went away) aborts the request and frees its blocks."""
        request_id = request_id or uuid.uuid4().hex
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), stream)
        finished = False
        try:
            await self._call(self.engine.add_request, prompt, params, request_id)
            while not finished:
                out = await stream.get()
                if isinstance(out, Exception):
                    raise out
                finished = out.finished
                yield out
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._commands.put((self.engine.abort, (request_id,), None))

    async def abort(self, request_id: str) -> None:
        await self._call(self.engine.abort, request_id)

    async def end_thinking(self, request_id: str) -> bool:
        return await self._call(self.engine.end_thinking, request_id)

    def stats(self) -> dict:
        return self.engine.stats()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    async def shutdown(self) -> None:
        """Abort whatever is in flight and stop the engine thread."""
        self._stopping.set()
        self._commands.put((_nothing, (), None))
        await asyncio.to_thread(self._thread.join, 10)

    async def _call(self, fn, *args):
        if not self._thread.is_alive():
            raise self._dead_error()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put((fn, args, future))
        return await asyncio.wrap_future(future)

    # ---- engine thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            self._serve()
        except RankDiedError as e:  # the engine cannot run on: fail everything, stop
            self.failure = e
            log.error("%s", self._dead_error())
            self._fail_all(self._dead_error())
        else:
            self._fail_all(EngineDeadError("the engine is shutting down"))
        finally:
            self.engine.grammars.close()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            self.engine.check_ranks()
            self._run_commands(block=not self.engine.has_ready_work())
            if self._stopping.is_set() or not self.engine.has_unfinished():
                continue
            self._step()

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except RankDiedError:
            raise
        except Exception as e:  # a scheduler-level fault: fail what is in flight, go on
            log.exception("engine step failed")
            self._fail_all(e)
            return
        for out in outputs:
            self._deliver(out.request_id, out.refusal or out)

    def _wake(self) -> None:
        """Called when a rank dies: an idle loop, waiting for a command, looks at once."""
        self._commands.put((_nothing, (), None))

    def _dead_error(self) -> EngineDeadError:
        """What a caller is told: the first line of the cause (a rank's traceback stays in the log)."""
        if self.failure is None:
            return EngineDeadError("the engine has stopped")
        return EngineDeadError(f"the engine has stopped: {str(self.failure).splitlines()[0]}")

    def _run_commands(self, block: bool) -> None:
        try:
            item = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            fn, args, future = item
            try:
                result = fn(*args)
                if future is not None:
                    future.set_result(result)
            except Exception as e:
                if future is not None:
                    future.set_exception(e)
            try:
                item = self._commands.get_nowait()
            except queue.Empty:
                return

    def _deliver(self, request_id: str, item) -> None:
        target = self._streams.get(request_id)
        if target is None:
            return
        loop, stream = target
        try:
            loop.call_soon_threadsafe(stream.put_nowait, item)
        except RuntimeError:  # that caller's event loop is closed
            self._streams.pop(request_id, None)

    def _fail_all(self, error: Exception) -> None:
        for request_id in list(self.engine.requests):
            self.engine.abort(request_id)
            self._deliver(request_id, error)


def _nothing() -> None:
    """A command that only wakes the engine thread."""
