"""Assistant loop against a scripted OpenAI-compatible endpoint on a real socket."""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qthink.agent import Assistant

CRASHY_MCP_SERVER = '''
import os
from mcp.server.mcpserver import MCPServer

server = MCPServer("crashy")


@server.tool()
def echo(text: str) -> str:
    """Echo text back with the server's pid."""
    return f"echo:{text}:{os.getpid()}"


@server.tool()
def crash() -> str:
    """End the server process abruptly."""
    os._exit(3)


server.run()
'''


def reply(reasoning: str | None = None, content: str = "", calls: list | None = None) -> dict:
    """One scripted completion; calls are (name, arguments dict or raw string)."""
    return {"reasoning": reasoning, "content": content, "calls": calls or []}


class ScriptedEndpoint:
    """`/v1/chat/completions` (streamed) answering from a script, recording every request body."""

    def __init__(self, replies: list):
        self.replies, self.requests = list(replies), []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send_json({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append(body)
                if not endpoint.replies:
                    return self._send_json({"error": {"message": "script exhausted"}}, status=500)
                scripted = endpoint.replies.pop(0)
                scripted = scripted(body) if callable(scripted) else scripted
                if "error" in scripted:  # a 4xx: the openai client does not retry it
                    return self._send_json({"error": {"message": scripted["error"]}}, status=400)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for delta in stream_deltas(scripted):
                    self.wfile.write(f"data: {json.dumps(chunk(delta))}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

            def _send_json(self, data, status=200):
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def stream_deltas(scripted: dict) -> list[dict]:
    """Thinking, answer, then each call in two pieces, as a streaming server sends them."""
    deltas = [{"role": "assistant", "content": ""}]
    if scripted["reasoning"]:
        deltas.append({"reasoning_content": scripted["reasoning"]})
    if scripted["content"]:
        deltas.append({"content": scripted["content"]})
    for index, (name, args) in enumerate(scripted["calls"]):
        arguments = args if isinstance(args, str) else json.dumps(args)
        head = {"index": index, "id": f"call_{index}_{name}", "type": "function"}
        deltas.append({"tool_calls": [{**head, "function": {"name": name, "arguments": arguments[:3]}}]})
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": arguments[3:]}}]})
    return deltas


def chunk(delta: dict) -> dict:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "scripted",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }


@pytest.fixture
def endpoint_factory():
    made = []

    def make(replies):
        made.append(ScriptedEndpoint(replies))
        return made[-1]

    yield make
    for endpoint in made:
        endpoint.close()


def agent(endpoint, tools, **kwargs) -> Assistant:
    llm = {"model": "scripted", "model_server": endpoint.url, "api_key": "k", "generate_cfg": {"top_k": 20}}
    return Assistant(llm=llm, function_list=tools, **kwargs)


def tool_messages(response):
    return [m for m in response if m["role"] == "tool"]


def test_parallel_calls_run_concurrently_and_results_come_back_in_order(endpoint_factory):
    both_running = threading.Barrier(2, timeout=10)

    def slow_add(a: int, b: int) -> int:
        """Add two numbers slowly."""
        both_running.wait()  # only passes when the other call runs at the same time
        return a + b

    def slow_upper(text: str) -> str:
        """Upper-case a text slowly."""
        both_running.wait()
        return text.upper()

    calls = [("slow_add", {"a": 2, "b": 3}), ("slow_upper", {"text": "qwen"})]
    endpoint = endpoint_factory([reply("plan", "", calls), reply("done", "5 and QWEN")])
    with agent(endpoint, [slow_add, slow_upper]) as bot:
        response = bot.run_nonstream([{"role": "user", "content": "go"}])
    results = tool_messages(response)
    assert [(m["tool_call_id"], m["content"]) for m in results] == [
        ("call_0_slow_add", "5"),
        ("call_1_slow_upper", "QWEN"),
    ]
    assert response[-1] == {"role": "assistant", "content": "5 and QWEN", "reasoning_content": "done"}
    sent_back = endpoint.requests[1]["messages"]
    assert [m["role"] for m in sent_back] == ["user", "assistant", "tool", "tool"]
    assert sent_back[1]["tool_calls"][0]["function"]["arguments"] == json.dumps({"a": 2, "b": 3})
    assert {t["function"]["name"] for t in endpoint.requests[0]["tools"]} == {"slow_add", "slow_upper"}
    assert endpoint.requests[0]["top_k"] == 20


def test_raising_tool_unknown_tool_and_invalid_arguments_become_error_results(endpoint_factory):
    called = []

    def divide(x: int, y: int) -> float:
        """Divide x by y."""
        called.append((x, y))
        return x / y

    calls = [
        ("divide", {"x": 1, "y": 0}),
        ("no_such_tool", {}),
        ("divide", {"x": "one", "y": 2}),
        ("divide", "{not json"),
        ("divide", {"x": 1}),
    ]
    endpoint = endpoint_factory([reply("try", "", calls), reply(None, "I could not divide.")])
    with agent(endpoint, [divide]) as bot:
        response = bot.run_nonstream([{"role": "user", "content": "divide"}])
    texts = [m["content"] for m in tool_messages(response)]
    assert "ZeroDivisionError" in texts[0] and texts[0].startswith("Error")
    assert "no tool named 'no_such_tool'" in texts[1] and "divide" in texts[1]
    assert "invalid arguments for divide (x)" in texts[2] and "'one' is not of type 'integer'" in texts[2]
    assert "not valid JSON" in texts[3]
    assert "'y' is a required property" in texts[4]
    assert called == [(1, 0)]  # invalid calls never reach the function
    assert response[-1]["content"] == "I could not divide."


def test_max_rounds_caps_model_calls_and_the_last_round_offers_no_tools(endpoint_factory):
    count = []

    def tick() -> int:
        """Count calls."""
        count.append(1)
        return len(count)

    endpoint = endpoint_factory([reply("again", "", [("tick", {})]) for _ in range(3)])
    with agent(endpoint, [tick], max_rounds=3) as bot:
        response = bot.run_nonstream([{"role": "user", "content": "tick forever"}])
    assert len(endpoint.requests) == 3
    assert [("tools" in r) for r in endpoint.requests] == [True, True, False]
    assert len(count) == 2
    assert response[-1]["role"] == "assistant" and "tool_calls" not in response[-1]


def test_earlier_turns_thinking_is_dropped_and_the_current_loop_keeps_it(endpoint_factory):
    def lookup(key: str) -> str:
        """Look a key up."""
        return f"value-of-{key}"

    endpoint = endpoint_factory(
        [
            reply("first thoughts", "first answer"),
            reply("second thoughts", "", [("lookup", {"key": "k"})]),
            reply("third thoughts", "final"),
        ]
    )
    with agent(endpoint, [lookup], system_message="Be brief.") as bot:
        messages = [{"role": "user", "content": "one"}]
        messages += bot.run_nonstream(messages)
        messages.append({"role": "user", "content": "two"})
        messages += bot.run_nonstream(messages)
    last = endpoint.requests[2]["messages"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user", "assistant", "tool"]
    assert last[0]["content"] == "Be brief."
    assert "reasoning_content" not in last[2] and last[2]["content"] == "first answer"
    assert last[4]["reasoning_content"] == "second thoughts"
    assert messages[1]["reasoning_content"] == "first thoughts"  # the caller's copy is untouched
    assert messages[-1]["content"] == "final"


def test_run_streams_a_growing_response_list(endpoint_factory):
    def ping() -> str:
        """Ping."""
        return "pong"

    endpoint = endpoint_factory([reply("think", "", [("ping", {})]), reply("more", "answer")])
    with agent(endpoint, [ping]) as bot:
        states = [[dict(m) for m in s] for s in bot.run([{"role": "user", "content": "hi"}])]
    lengths = [len(s) for s in states]
    assert lengths == sorted(lengths) and lengths[-1] == 3
    partial_calls = [s[0].get("tool_calls") for s in states if len(s) == 1 and s[0].get("tool_calls")]
    assert partial_calls[0][0]["function"]["arguments"] == "{}"[:3]  # the call before its last piece
    assert states[-1][1] == {"role": "tool", "tool_call_id": "call_0_ping", "name": "ping", "content": "pong"}
    assert any(s[-1].get("reasoning_content") == "more" and s[-1]["content"] == "" for s in states)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_mcp_server_that_crashes_mid_session_is_restarted_and_closed_on_exit(endpoint_factory, tmp_path):
    script = tmp_path / "crashy.py"
    script.write_text(CRASHY_MCP_SERVER)
    config = {"mcpServers": {"crashy": {"command": sys.executable, "args": [str(script)]}}}
    endpoint = endpoint_factory(
        [
            reply("1", "", [("crashy-echo", {"text": "a"})]),
            reply("2", "", [("crashy-crash", {})]),
            reply("3", "", [("crashy-echo", {"text": "b"})]),
            reply("4", "survived"),
        ]
    )
    bot = agent(endpoint, [config])
    try:
        response = bot.run_nonstream([{"role": "user", "content": "crash it"}])
    finally:
        bot.close()
    first, crashed, second = [m["content"] for m in tool_messages(response)]
    assert first.startswith("echo:a:") and second.startswith("echo:b:")
    assert "stopped during the call" in crashed and "restarted" in crashed
    old_pid, new_pid = int(first.rsplit(":", 1)[1]), int(second.rsplit(":", 1)[1])
    assert old_pid != new_pid and not pid_alive(old_pid)
    deadline = time.time() + 10
    while pid_alive(new_pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not pid_alive(new_pid), "the MCP server outlived the agent"
    assert response[-1]["content"] == "survived"


def test_real_time_mcp_server_from_pypi(endpoint_factory):
    config = {
        "mcpServers": {
            "time": {
                "command": sys.executable,
                "args": ["-m", "mcp_server_time", "--local-timezone=Asia/Shanghai"],
            }
        }
    }
    endpoint = endpoint_factory(
        [
            reply("ask the clock", "", [("time-get_current_time", {"timezone": "Asia/Shanghai"})]),
            lambda body: reply(None, "It is " + json.loads(body["messages"][-1]["content"])["datetime"]),
        ]
    )
    with agent(endpoint, [config]) as bot:
        response = bot.run_nonstream([{"role": "user", "content": "What time is it in Shanghai?"}])
    names = {t["function"]["name"] for t in endpoint.requests[0]["tools"]}
    assert {"time-get_current_time", "time-convert_time"} <= names
    result = json.loads(tool_messages(response)[0]["content"])
    assert result["timezone"] == "Asia/Shanghai" and result["datetime"].endswith("+08:00")
    assert response[-1]["content"] == f"It is {result['datetime']}"
