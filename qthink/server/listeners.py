"""Serve one app on several ports (the API port, and Ollama's 11434 where its clients look)."""

import asyncio
import logging
import socket

import uvicorn

from qthink.engine.async_engine import AsyncEngine

# The kernel's send buffer of each connection, fixed rather than grown to megabytes: with it,
# a client that stops reading blocks the stream's writes after ~200 KB (this, doubled by the
# kernel, and the server's own 64 KB), so its request is soon dropped (--stream-backlog-tokens).
SEND_BUFFER_BYTES = 64 << 10

log = logging.getLogger("qthink")

ENGINE_POLL_S = 0.2


def serve(
    app, host: str, ports: list[int], log_level: str = "warning", engine: AsyncEngine | None = None
) -> int:
    """Run until a signal stops one listener, or `engine` stops on its own (a tensor-parallel
    rank died), then stop the others; only the first runs the app's lifespan, so the engine
    starts and shuts down once. Returns the exit status: 1 when the engine failed, else 0."""
    servers = [
        uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level=log_level,
                timeout_graceful_shutdown=10,
                lifespan="on" if i == 0 else "off",
            )
        )
        for i, port in enumerate(ports)
    ]
    try:
        return asyncio.run(_serve_all(servers, engine))
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled, once it has shut down
        return 0


async def _serve_all(servers: list[uvicorn.Server], engine: AsyncEngine | None) -> int:
    tasks = [asyncio.create_task(s.serve(sockets=[listening_socket(s.config)])) for s in servers]
    watch = asyncio.create_task(_until_failed(engine)) if engine is not None else None
    done, _ = await asyncio.wait([*tasks, *filter(None, [watch])], return_when=asyncio.FIRST_COMPLETED)
    failed = watch is not None and watch in done
    if failed:
        log.error("the engine failed (%s); the server exits", _first_line(engine))
    elif watch is not None:
        watch.cancel()
    for s in servers:
        s.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    return 1 if failed else 0


async def _until_failed(engine: AsyncEngine) -> None:
    while engine.failure is None:
        await asyncio.sleep(ENGINE_POLL_S)


def _first_line(engine: AsyncEngine | None) -> str:
    return str(engine.failure).splitlines()[0] if engine is not None and engine.failure else ""


def listening_socket(config: uvicorn.Config) -> socket.socket:
    """The bound socket; the connections it accepts inherit its send buffer size."""
    sock = config.bind_socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    return sock
