"""`qthink serve` as a user runs it: a subprocess with a log line, served over a real socket, and
a clean stop on SIGINT or SIGTERM that lets a request in flight finish."""

import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from tests.helpers.server import free_port, stop, wait_healthy


def start_server(model_dir, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "qthink", "serve", str(model_dir), "--port", str(port)]
    command += ["--served-model-name", "tiny", "--dtype", "float32", "--max-model-len", "512"]
    command += ["--kv-cache-memory", str(8 << 20), "--max-num-seqs", "4", "--seed", "1"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def served(tiny_model_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(tiny_model_dir, port)
    try:
        wait_healthy(proc, url)
        yield proc, url, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_logs_answers_and_stops_on_sigint(served, tiny_model_dir):
    proc, url, port = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4
    log = stop(proc, signal.SIGINT)
    assert proc.returncode == 0, log
    line = next(line for line in log.splitlines() if "qthink serving" in line)
    assert str(tiny_model_dir) in line and "'tiny'" in line and "float32" in line
    assert "KV blocks" in line and f"http://127.0.0.1:{port}/v1" in line


def test_sigterm_with_a_stream_in_flight_exits_cleanly(served):
    proc, url, _ = served
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    # logprobs give every token its own chunk, even one that decodes to no text
    body |= {"max_tokens": 200, "ignore_eos": True, "logprobs": True}
    received: list[str] = []

    def read_stream():
        try:
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as resp:
                received.extend(line for line in resp.iter_lines() if line)
        except httpx.TransportError:
            pass  # the server may close the connection as it stops

    reader = threading.Thread(target=read_stream)
    reader.start()
    deadline = time.monotonic() + 30
    while len(received) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(received) >= 5 and "data: [DONE]" not in received, "no stream in flight"
    log = stop(proc, signal.SIGTERM)
    reader.join(timeout=30)
    # uvicorn stops gracefully, then re-raises SIGTERM so a supervisor sees how it ended
    assert proc.returncode in (0, -signal.SIGTERM), log
    assert "Traceback" not in log, log
    assert not reader.is_alive() and received[-1] == "data: [DONE]"  # finished, not cut off
