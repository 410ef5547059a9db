"""MCP servers as agent tools: stdio or streamable-HTTP sessions, restarted when they die, closed on exit."""

import asyncio
import atexit
import json
import logging
import threading
import weakref
from contextlib import AsyncExitStack
from typing import cast

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from qthink.agent.tools import Tool

log = logging.getLogger("qthink.agent")

CONNECTION_CLOSED = -32000


class MCPServerDied(Exception):
    """The server's connection ended during a call."""


class ServerConnection:
    """One MCP server: a task that holds its transport and session open until stopped.

    The transport's context must be entered and left by the same task (anyio cancel
    scopes), so a dedicated task owns it and calls only borrow the session."""

    def __init__(self, name: str, cfg: dict, timeout: float):
        self.name, self.cfg, self.timeout = name, cfg, timeout
        self.session: ClientSession | None = None
        self.tools: list = []
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._hold(ready))
        await ready

    async def stop(self) -> None:
        if self._task is None:
            return
        cast(asyncio.Event, self._stop).set()  # start made it with the task
        try:
            await asyncio.wait_for(self._task, timeout=15)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
        self._task, self.session = None, None

    async def restart(self, failed: ClientSession | None) -> None:
        """Restart once for a given dead session, however many parallel calls saw it die."""
        async with self._lock:
            if self.session is failed:
                log.warning("MCP server %r stopped; restarting it", self.name)
                await self.stop()
                await self.start()

    async def alive(self) -> bool:
        """A ping: a server that died while idle is restarted before the call, not after it fails."""
        try:
            with anyio.fail_after(10):
                await cast(ClientSession, self.session).send_ping()
        except Exception:  # noqa: BLE001 — any failure means the connection is gone
            return False
        return True

    async def call(self, tool_name: str, arguments: dict):
        try:
            return await cast(ClientSession, self.session).call_tool(
                tool_name, arguments, read_timeout_seconds=self.timeout
            )
        except MCPError as exc:
            if exc.error.code != CONNECTION_CLOSED:
                raise
            raise MCPServerDied(str(exc)) from exc
        except (OSError, EOFError) as exc:
            raise MCPServerDied(str(exc)) from exc

    async def _hold(self, ready: asyncio.Future) -> None:
        try:
            async with AsyncExitStack() as stack:
                read, write = (await stack.enter_async_context(self._transport()))[:2]
                self.session = await stack.enter_async_context(ClientSession(read, write))
                await self.session.initialize()
                self.tools = (await self.session.list_tools()).tools
                ready.set_result(None)
                await cast(asyncio.Event, self._stop).wait()
        except BaseException as exc:  # noqa: BLE001 — a dying server must not kill the loop
            if not ready.done():
                ready.set_exception(RuntimeError(f"MCP server {self.name!r} failed to start: {exc!r}"))
            elif not isinstance(exc, asyncio.CancelledError):
                log.debug("MCP server %r closed with %r", self.name, exc)

    def _transport(self):
        if "url" in self.cfg:
            return streamable_http_client(self.cfg["url"])
        params = StdioServerParameters(
            command=self.cfg["command"],
            args=list(self.cfg.get("args", [])),
            env=self.cfg.get("env"),
            cwd=self.cfg.get("cwd"),
        )
        return stdio_client(params)


class MCPManager:
    """Every server of an `{'mcpServers': {...}}` config, on one event loop in a daemon thread."""

    def __init__(self, config: dict, timeout: float = 300.0):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="qthink-mcp", daemon=True)
        self._thread.start()
        servers = config.get("mcpServers", config)
        self.servers = {name: ServerConnection(name, cfg, timeout) for name, cfg in servers.items()}
        self._closed = False
        weakref.finalize(self, _stop_loop, self.loop, self._thread)
        atexit.register(self.close)
        try:
            self._run(_all(s.start() for s in self.servers.values()))
        except BaseException:
            self.close()
            raise

    def tools(self) -> list["MCPTool"]:
        """One tool per server tool, named `server-tool`."""
        return [MCPTool(self, name, t) for name, conn in self.servers.items() for t in conn.tools]

    def call(self, server: str, tool_name: str, arguments: dict) -> str:
        return self._run(self._call(self.servers[server], tool_name, arguments))

    async def _call(self, conn: ServerConnection, tool_name: str, arguments: dict) -> str:
        if conn.session is None or not await conn.alive():
            await conn.restart(conn.session)
        session = conn.session
        try:
            result = await conn.call(tool_name, arguments)
        except MCPServerDied:
            await conn.restart(session)
            return f"Error: MCP server {conn.name!r} stopped during the call; it has been restarted."
        return result_to_text(result)

    def close(self) -> None:
        """Stop every server (the SDK ends each process tree) and the loop."""
        if self._closed:
            return
        self._closed = True
        if self.loop.is_running():
            try:
                self._run(_all(s.stop() for s in self.servers.values()))
            except Exception as exc:  # noqa: BLE001 — closing goes on whatever one server did
                log.warning("closing MCP servers: %r", exc)
        _stop_loop(self.loop, self._thread)
        atexit.unregister(self.close)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


async def _all(coros) -> None:
    """Run together; the first failure is raised once all have finished."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if loop.is_running():
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


def result_to_text(result) -> str:
    """A CallToolResult as text: its text parts, else its structured content; errors marked."""
    parts = []
    for block in result.content or []:
        if getattr(block, "type", "") == "text":
            parts.append(block.text)
        elif getattr(block, "type", "") == "image":
            parts.append(f"[image {block.mime_type}, {len(block.data)} base64 chars]")
        else:
            parts.append(block.model_dump_json(exclude_none=True))
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    text = "\n".join(parts)
    return f"Error: {text}" if result.is_error else text


class MCPTool(Tool):
    """An MCP server's tool, called through its manager."""

    def __init__(self, manager: MCPManager, server: str, tool):
        super().__init__()
        self.manager, self.server, self.remote_name = manager, server, tool.name
        self.name = f"{server}-{tool.name}"
        self.description = tool.description or ""
        self.parameters = tool.input_schema or {"type": "object", "properties": {}}

    def call(self, params: dict) -> str:
        return self.manager.call(self.server, self.remote_name, params)
