"""`qthink agent` in a subprocess against a scripted endpoint: labelled thinking, calls, results, turns."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.scripted_endpoint import ScriptedEndpoint, reply

REPO = Path(__file__).resolve().parents[1]


def run_cli(endpoint, *args, stdin=None):
    command = [sys.executable, "-m", "qthink", "agent", "--model-server", endpoint.url, "--no-color", *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120)


def test_one_prompt_with_an_mcp_tool_prints_each_part_labelled(tmp_path):
    server = {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone=Asia/Shanghai"]}
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"time": server}}))
    call = ("time-get_current_time", {"timezone": "Europe/Paris"})
    endpoint = ScriptedEndpoint([reply("I need the clock.", "", [call]), reply("Got it.", "It is late.")])
    try:
        done = run_cli(endpoint, "--mcp", str(config), "-p", "What time is it in Paris?")
    finally:
        endpoint.close()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[thinking] I need the clock."
    assert lines[1] == '[call time-get_current_time] {"timezone": "Europe/Paris"}'
    assert lines[2].startswith("[result time-get_current_time] {")
    assert '"timezone": "Europe/Paris"' in done.stdout
    assert lines[-2:] == ["[thinking] Got it.", "[answer] It is late."]
    assert endpoint.requests[0]["model"] == "scripted"  # read from /v1/models when not given


def test_stdin_turns_share_history_without_old_thinking():
    endpoint = ScriptedEndpoint([reply("t1", "first"), reply("t2", "second")])
    try:
        done = run_cli(endpoint, "--system", "Be brief.", stdin="hello\n\nagain\nexit\nnever sent\n")
    finally:
        endpoint.close()
    assert done.returncode == 0, done.stderr
    assert len(endpoint.requests) == 2
    second = endpoint.requests[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[2] == {"role": "assistant", "content": "first"}
    assert "[answer] second" in done.stdout


def test_the_article_example_runs_with_its_tools():
    calls = [("code_interpreter", {"code": "print(6 * 7)"}), ("time-get_current_time", {"timezone": "UTC"})]
    endpoint = ScriptedEndpoint([reply("Let me check.", "", calls), reply("Done.", "The answer is 42.")])
    try:
        command = [
            sys.executable,
            "examples/agent_article.py",
            "--model-server",
            endpoint.url,
            "Compute 6*7.",
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO)}  # as if installed
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    finally:
        endpoint.close()
    assert done.returncode == 0, done.stderr
    tool_names = {t["function"]["name"] for t in endpoint.requests[0]["tools"]}
    assert {"code_interpreter", "time-get_current_time"} <= tool_names
    assert endpoint.requests[0]["top_k"] == 20 and endpoint.requests[0]["temperature"] == 0.6
    assert "[result code_interpreter] 42" in done.stdout
    assert '[result time-get_current_time] {\n  "timezone": "UTC"' in done.stdout
    assert done.stdout.rstrip().endswith("[answer] The answer is 42.")


def test_a_failing_model_request_ends_the_turn_not_the_session():
    endpoint = ScriptedEndpoint([{"error": "the prompt is too long"}, reply(None, "after the error")])
    try:
        done = run_cli(endpoint, "--model", "scripted", stdin="first\nsecond\n")
    finally:
        endpoint.close()
    assert done.returncode == 0, done.stderr
    assert (
        "[error]" in done.stdout
        and "the prompt is too long" in done.stdout
        and "[answer] after the error" in done.stdout
    )
    assert [m["content"] for m in endpoint.requests[-1]["messages"]] == ["second"]
