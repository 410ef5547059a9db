"""qthink eval's runner against a scripted OpenAI-compatible endpoint on 127.0.0.1: model-card
settings, retries, several endpoints, resume after SIGKILL, reports and compare."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from qthink.eval.report import compare, markdown, summarize, write_reports
from qthink.eval.runner import RunConfig, run_tasks
from qthink.eval.tasks import Task, load_task


class ScriptedEndpoint:
    """A real HTTP server that answers chat completions from a script and counts every request."""

    def __init__(self, answer, delay: float = 0.0, fail_first: int = 0, stall_first: int = 0):
        self.answer, self.delay, self.fail_first, self.stall_first = answer, delay, fail_first, stall_first
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _handler(self):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left, as the timeout test wants

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint.lock:
                    endpoint.requests.append(body)
                    failing = endpoint.fail_first > 0
                    endpoint.fail_first -= failing
                    stalling = endpoint.stall_first > 0
                    endpoint.stall_first -= stalling
                time.sleep(2.0 if stalling else endpoint.delay)
                if failing:
                    return self._send(500, {"error": {"message": "scripted failure", "type": "server_error"}})
                self._send(200, completion(*endpoint.answer(body)))

        return Handler

    def asked(self) -> Counter:
        """How often each (prompt, seed) was requested."""
        return Counter((r["messages"][-1]["content"], r["seed"]) for r in self.requests)

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def completion(reasoning: str, content: str | None, tool_calls: list | None = None) -> dict:
    message = {"role": "assistant", "content": content, "reasoning_content": reasoning}
    if tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, (n, a) in enumerate(tool_calls)
        ]
    thinking, answer = len(reasoning.split()), len((content or "x").split())
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "scripted",
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}
        ],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": thinking + answer,
            "total_tokens": 5 + thinking + answer,
            "completion_tokens_details": {"reasoning_tokens": thinking},
        },
    }


def math_items(n: int) -> list[dict]:
    return [
        {"id": f"m{i}", "kind": "math", "prompt": f"What is {i} + {i}?", "answer": str(2 * i)}
        for i in range(n)
    ]


def right_on_even(body: dict):
    """Right answers for even numbers, wrong for odd ones, thinking as long as the number."""
    i = int(body["messages"][-1]["content"].split()[2])
    return ("hmm " * (i + 1), rf"so \boxed{{{2 * i if i % 2 == 0 else -1}}}")


def config(tmp_path: Path, urls: list[str], **overrides) -> RunConfig:
    return RunConfig(base_urls=urls, output=tmp_path / "run.jsonl", backoff=0.01, progress=False, **overrides)


def test_requests_carry_the_model_card_settings(tmp_path):
    tasks = [load_task("math-example"), load_task("choice-example"), load_task("function-example")]
    with ScriptedEndpoint(lambda body: ("think", "fine")) as endpoint:
        asyncio.run(run_tasks(tasks, config(tmp_path, [endpoint.url])))
    by_prompt = {r["messages"][-1]["content"]: r for r in endpoint.requests}
    math_req = by_prompt[tasks[0].items[0]["prompt"]]
    assert (math_req["temperature"], math_req["top_p"], math_req["top_k"]) == (0.6, 0.95, 20)
    assert math_req["max_tokens"] == 81_920 and math_req["model"] == "scripted"
    choice_req = next(r for r in endpoint.requests if "`answer` field" in r["messages"][-1]["content"])
    assert choice_req["max_tokens"] == 32_768 and "tools" not in choice_req
    tool_req = by_prompt[tasks[2].items[0]["prompt"]]
    assert tool_req["tools"][0]["function"]["name"] == "weather_current"


def test_scores_tokens_and_thinking_fallback_are_recorded(tmp_path):
    def answer(body):
        i = int(body["messages"][-1]["content"].split()[2])
        return (rf"it is \boxed{{{2 * i}}}", "I am sure." if i == 1 else rf"\boxed{{{2 * i}}}")

    with ScriptedEndpoint(answer) as endpoint:
        records = asyncio.run(run_tasks([Task("m", math_items(3))], config(tmp_path, [endpoint.url])))
    by_id = {r["id"]: r for r in records}
    assert all(r["correct"] for r in records)
    assert by_id["m1"]["source"] == "thinking" and by_id["m0"]["source"] == "answer"
    assert by_id["m2"]["thinking_tokens"] == 3 and by_id["m2"]["answer_tokens"] == 1
    assert not by_id["m2"]["tokens_estimated"]


def test_5xx_answers_are_retried_with_backoff(tmp_path):
    with ScriptedEndpoint(right_on_even, fail_first=3) as endpoint:
        records = asyncio.run(run_tasks([Task("m", math_items(2))], config(tmp_path, [endpoint.url])))
    assert len(endpoint.requests) == 2 + 3
    assert sorted(r["correct"] for r in records) == [False, True]
    assert sum(r["attempts"] for r in records) == 5


def test_timeouts_are_retried(tmp_path):
    with ScriptedEndpoint(right_on_even, stall_first=1) as endpoint:
        (record,) = asyncio.run(
            run_tasks([Task("m", math_items(1))], config(tmp_path, [endpoint.url], timeout=0.5))
        )
    assert record["correct"] and record["attempts"] == 2 and len(endpoint.requests) == 2


def test_exhausted_retries_are_recorded_and_asked_again_on_resume(tmp_path):
    with ScriptedEndpoint(right_on_even, fail_first=2) as endpoint:
        first = asyncio.run(
            run_tasks([Task("m", math_items(1))], config(tmp_path, [endpoint.url], retries=1))
        )
        assert "failed" in first[0] and "InternalServerError" in first[0]["failed"]
        again = asyncio.run(
            run_tasks([Task("m", math_items(1))], config(tmp_path, [endpoint.url], retries=1))
        )
    assert len(endpoint.requests) == 3
    summary = summarize([Task("m", math_items(1))], again, {"samples": 1, "seed": 0})
    assert summary["tasks"]["m"]["metrics"]["avg@1"]["score"] == 1.0
    assert summary["tasks"]["m"]["failed_samples"] == 0


def test_several_endpoints_share_the_load(tmp_path):
    with ScriptedEndpoint(right_on_even, delay=0.05) as a, ScriptedEndpoint(right_on_even, delay=0.05) as b:
        records = asyncio.run(
            run_tasks([Task("m", math_items(12))], config(tmp_path, [a.url, b.url], concurrency=4))
        )
    assert len(records) == 12
    assert len(a.requests) >= 3 and len(b.requests) >= 3
    assert {r["endpoint"] for r in records} == {a.url, b.url}


def test_samples_give_avg_pass_and_majority(tmp_path):
    def answer(body):
        # item 0: right on seeds 0 and 1 of 3; item 1: right on seed 2 only; item 2: never
        i, seed = int(body["messages"][-1]["content"].split()[2]), body["seed"]
        right = {0: seed in (0, 1), 1: seed == 2, 2: False}[i]
        return ("t", rf"\boxed{{{2 * i if right else 99}}}")

    task = Task("m", math_items(3))
    with ScriptedEndpoint(answer) as endpoint:
        records = asyncio.run(run_tasks([task], config(tmp_path, [endpoint.url], samples=3)))
    assert len(endpoint.asked()) == 9
    metrics = summarize([task], records, {"samples": 3, "seed": 0})["tasks"]["m"]["metrics"]
    assert metrics["avg@3"]["score"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert metrics["pass@3"]["score"] == pytest.approx(2 / 3)
    assert metrics["maj@3"]["score"] == pytest.approx(1 / 3)  # item 1's majority is the wrong 99
    low, high = metrics["avg@3"]["ci95"]
    assert low <= metrics["avg@3"]["score"] <= high


def test_reports_markdown_json_png_and_compare(tmp_path):
    task = Task("m", math_items(10))
    with ScriptedEndpoint(right_on_even) as endpoint:
        records = asyncio.run(run_tasks([task], config(tmp_path, [endpoint.url])))
    summary = summarize([task], records, {"samples": 1, "seed": 0})
    assert summary["tasks"]["m"]["metrics"]["avg@1"]["score"] == 0.5
    assert summary["tasks"]["m"]["mean_thinking_tokens"] == pytest.approx(5.5)
    table = markdown(summary)
    assert "| m | avg@1 | 50.0% |" in table and "mean thinking tokens" in table
    md, js, png = write_reports(summary, records, tmp_path / "run")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and json.loads(js.read_text()) == summary
    better = json.loads(js.read_text())
    better["tasks"]["m"]["metrics"]["avg@1"]["score"] = 0.7
    assert "| m | avg@1 | 50.0% | 70.0% | +20.0 pt |" in compare(summary, better)


def _eval_cli(tasks_file: Path, url: str, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "qthink", "eval", "run", str(tasks_file), "--base-url", url]
    cmd += ["--output", str(out), "--no-progress", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_killed_run_resumes_without_asking_finished_items_again(tmp_path):
    tasks_file = tmp_path / "sums.jsonl"
    tasks_file.write_text("".join(json.dumps(item) + "\n" for item in math_items(24)))
    out = tmp_path / "sums-run.jsonl"
    with ScriptedEndpoint(right_on_even, delay=0.15) as endpoint:
        proc = _eval_cli(tasks_file, endpoint.url, out, "--concurrency", "2")
        deadline = time.time() + 60
        while (not out.is_file() or len(out.read_text().splitlines()) < 6) and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = [json.loads(line)["id"] for line in out.read_text().splitlines()]
        assert 6 <= len(before) < 24
        asked_before = len(endpoint.requests)
        resumed = _eval_cli(tasks_file, endpoint.url, out, "--concurrency", "4")
        stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(f"m{i}" for i in range(24))
    asked = Counter(r["messages"][-1]["content"] for r in endpoint.requests)
    prompts = {item["id"]: item["prompt"] for item in math_items(24)}
    assert all(asked[prompts[i]] == 1 for i in before)
    # only the requests in flight at the kill were asked twice
    assert len(endpoint.requests) - 24 == asked_before - len(before) <= 2
    assert "| sums | avg@1 | 50.0% |" in stdout
    assert (tmp_path / "sums-run.json").is_file() and (tmp_path / "sums-run.png").is_file()


def test_compare_command(tmp_path):
    for name, score in (("bf16", 0.8), ("int4", 0.75)):
        summary = {
            "tasks": {
                "aime": {"metrics": {"avg@1": {"score": score, "ci95": [0, 1]}}, "mean_thinking_tokens": 100}
            }
        }
        (tmp_path / f"{name}.json").write_text(json.dumps(summary))
    cmd = [sys.executable, "-m", "qthink", "eval", "compare", "bf16.json", "int4.json"]
    result = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()}
    )
    assert result.returncode == 0, result.stderr
    assert "| aime | avg@1 | 80.0% | 75.0% | -5.0 pt |" in result.stdout


def test_unknown_task_is_a_one_line_error(tmp_path):
    cmd = [sys.executable, "-m", "qthink", "eval", "run", str(tmp_path / "nope.jsonl")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 2 and "no task" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_endpoint_is_a_one_line_error(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "qthink",
        "eval",
        "run",
        "math-example",
        "--output",
        str(tmp_path / "r.jsonl"),
    ]
    cmd += ["--base-url", "http://127.0.0.1:9/v1", "--retries", "0", "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 1 and "127.0.0.1:9" in result.stderr and "Traceback" not in result.stderr


def test_an_item_that_breaks_the_scorer_is_scored_wrong_and_the_run_goes_on(tmp_path):
    task = load_task("function-example")
    task.items = task.items[:2]
    task.items[0]["ground_truth"] = [{}]  # malformed: no function name
    with ScriptedEndpoint(lambda body: ("t", None, [("weather_current", {"city": "Oslo"})])) as endpoint:
        records = asyncio.run(run_tasks([task], config(tmp_path, [endpoint.url])))
    by_id = {r["id"]: r for r in records}
    assert (
        by_id["simple-weather"]["error"].startswith("scoring failed")
        and not by_id["simple-weather"]["correct"]
    )
    assert "expected a call to convert_length" in by_id["simple-convert"]["error"]


def test_hermes_calls_left_in_the_content_are_parsed(tmp_path):
    task = load_task("function-example")
    task.items = task.items[:1]
    call = '<tool_call>\n{"name": "weather_current", "arguments": {"city": "Oslo"}}\n</tool_call>'
    with ScriptedEndpoint(lambda body: ("t", call)) as endpoint:
        (record,) = asyncio.run(run_tasks([task], config(tmp_path, [endpoint.url])))
    assert record["correct"], record["error"]
    assert record["extracted"] == [{"weather.current": {"city": "Oslo"}}]


def chinese_answer(body: dict):
    i = int(body["messages"][-1]["content"].split()[2])
    return ("思考中 " * 3, rf"答案是 \boxed{{{2 * i}}}")


def test_a_last_line_cut_inside_a_utf8_character_is_dropped_and_asked_again(tmp_path):
    cfg = config(tmp_path, [])
    with ScriptedEndpoint(chinese_answer) as endpoint:
        cfg.base_urls = [endpoint.url]
        asyncio.run(run_tasks([Task("m", math_items(3))], cfg))
        lines = cfg.output.read_bytes().splitlines(keepends=True)
        last = lines[-1]
        cut = last.index("答".encode()) + 1  # inside the three bytes of one character
        cfg.output.write_bytes(b"".join(lines[:-1]) + last[:cut])
        lost = json.loads(last)["id"]
        records = asyncio.run(run_tasks([Task("m", math_items(3))], cfg))
    assert len(endpoint.requests) == 4
    assert endpoint.requests[-1]["messages"][-1]["content"] == f"What is {lost[1:]} + {lost[1:]}?"
    text = cfg.output.read_bytes().decode("utf-8")  # valid UTF-8 throughout
    assert sorted(json.loads(line)["id"] for line in text.splitlines()) == ["m0", "m1", "m2"]
    assert sorted(r["id"] for r in records) == ["m0", "m1", "m2"] and all(r["correct"] for r in records)


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(tmp_path):
    tasks_file = tmp_path / "sums.jsonl"
    tasks_file.write_text("".join(json.dumps(item) + "\n" for item in math_items(8)))
    out = tmp_path / "shared.jsonl"
    with ScriptedEndpoint(right_on_even, delay=0.3) as endpoint:
        first = _eval_cli(tasks_file, endpoint.url, out, "--concurrency", "1")
        deadline = time.time() + 60
        while (not out.is_file() or not out.read_text()) and time.time() < deadline:
            time.sleep(0.02)
        second = _eval_cli(tasks_file, endpoint.url, out)
        _, second_err = second.communicate(timeout=60)
        first.communicate(timeout=120)
    assert second.returncode == 2 and "being written by another run" in second_err
    assert "Traceback" not in second_err
    assert first.returncode == 0
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(f"m{i}" for i in range(8)) and len(endpoint.requests) == 8
