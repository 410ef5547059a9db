"""Serve one app on several ports (the API port, and Ollama's 11434 where its clients look)."""

import asyncio
import socket

import uvicorn

# The kernel's send buffer of each connection, fixed rather than grown to megabytes: with it,
# a client that stops reading blocks the stream's writes after ~200 KB (this, doubled by the
# kernel, and the server's own 64 KB), so its request is soon dropped (--stream-backlog-tokens).
SEND_BUFFER_BYTES = 64 << 10


def serve(app, host: str, ports: list[int], log_level: str = "warning") -> None:
    """Run until a signal stops one listener, then stop the others; only the first runs the
    app's lifespan, so the engine starts and shuts down once."""
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
        asyncio.run(_serve_all(servers))
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled, once it has shut down
        pass


async def _serve_all(servers: list[uvicorn.Server]) -> None:
    tasks = [asyncio.create_task(s.serve(sockets=[listening_socket(s.config)])) for s in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for s in servers:
        s.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)


def listening_socket(config: uvicorn.Config) -> socket.socket:
    """The bound socket; the connections it accepts inherit its send buffer size."""
    sock = config.bind_socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    return sock
