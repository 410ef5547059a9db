"""MCP over streamable HTTP, and servers that fail to start."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from qthink.agent.mcp_client import MCPManager
from qthink.agent.tools import run_tool
from tests.helpers.scripted_endpoint import CRASHY_MCP_SERVER
from tests.helpers.server import free_port

HTTP_MCP_SERVER = '''
import sys
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("web")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def fail(reason: str) -> str:
    """Always fails."""
    raise ToolError(reason)


server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
'''


@pytest.fixture
def http_mcp_url(tmp_path):
    script = tmp_path / "web_mcp.py"
    script.write_text(HTTP_MCP_SERVER)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(script), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}/mcp"
    process.terminate()
    process.wait(timeout=10)


def test_streamable_http_server_tools_are_named_server_tool(http_mcp_url):
    manager = MCPManager({"mcpServers": {"web": {"url": http_mcp_url}}})
    try:
        tools = {tool.name: tool for tool in manager.tools()}
        assert set(tools) == {"web-add", "web-fail"}
        assert tools["web-add"].parameters["required"] == ["a", "b"]
        assert run_tool(tools["web-add"], {"a": 2, "b": 40}) == "42"
        failed = run_tool(tools["web-fail"], {"reason": "disk full"})
        assert failed.startswith("Error: ") and "disk full" in failed
        assert "invalid arguments for web-add" in run_tool(tools["web-add"], {"a": "two", "b": 1})
    finally:
        manager.close()


def test_a_server_that_cannot_start_is_a_clear_error():
    config = {
        "mcpServers": {"broken": {"command": sys.executable, "args": ["-c", "import sys; sys.exit(2)"]}}
    }
    with pytest.raises(RuntimeError, match="MCP server 'broken' failed to start"):
        MCPManager(config)


def test_a_server_killed_while_idle_is_restarted_before_the_next_call(tmp_path):
    script = tmp_path / "crashy.py"
    script.write_text(CRASHY_MCP_SERVER)
    manager = MCPManager({"mcpServers": {"crashy": {"command": sys.executable, "args": [str(script)]}}})
    try:
        old_pid = int(manager.call("crashy", "echo", {"text": "a"}).rsplit(":", 1)[1])
        os.kill(old_pid, signal.SIGKILL)
        time.sleep(0.5)
        answer = manager.call("crashy", "echo", {"text": "b"})
    finally:
        manager.close()
    assert answer.startswith("echo:b:") and int(answer.rsplit(":", 1)[1]) != old_pid
