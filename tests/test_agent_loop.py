"""Assistant loop against a scripted OpenAI-compatible endpoint on a real socket."""

import json
import os
import sys
import threading
import time

import pytest

from tests.helpers.scripted_endpoint import CRASHY_MCP_SERVER, ScriptedEndpoint, agent, reply, tool_messages


@pytest.fixture
def endpoint_factory():
    made = []

    def make(replies):
        made.append(ScriptedEndpoint(replies))
        return made[-1]

    yield make
    for endpoint in made:
        endpoint.close()


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
