"""qthink eval against a real `qthink serve` subprocess: every kind of request is accepted and
the thinking/answer token split comes from the server's usage, not an estimate."""

import json
import subprocess
import sys

import pytest

from tests.helpers.server import free_port, serve_subprocess, wait_healthy


@pytest.fixture
def served_url(tiny_model_dir, tmp_path):
    port = free_port()
    # a file, not a pipe: a full pipe would stall the server's logging
    proc = serve_subprocess(tiny_model_dir, port, (tmp_path / "serve.log").open("w"))
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.kill()
        proc.wait()


def test_eval_run_against_qthink_serve(served_url, tmp_path):
    out = tmp_path / "tiny.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "qthink",
        "eval",
        "run",
        "math-example",
        "choice-example",
        "function-example",
    ]
    cmd += ["--base-url", served_url, "--max-tokens", "12", "--limit", "3", "--samples", "2"]
    cmd += ["--output", str(out), "--no-progress", "--concurrency", "4"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 * 3 * 2
    assert not [r["failed"] for r in records if "failed" in r]
    for r in records:
        assert r["finish_reason"] in ("stop", "length", "tool_calls")
        assert not r["tokens_estimated"]
        assert 0 < r["thinking_tokens"] + r["answer_tokens"] <= 12
    summary = json.loads((tmp_path / "tiny.json").read_text())
    assert set(summary["tasks"]) == {"math-example", "choice-example", "function-example"}
    assert all(t["items"] == 3 and "pass@2" in t["metrics"] for t in summary["tasks"].values())
    assert "| math-example | avg@2 |" in result.stdout
