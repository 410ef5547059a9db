"""Faults: a request that raises inside the engine fails alone; SIGTERM stops a busy server cleanly."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.helpers.server import RunningServer, free_port

FAULTY_SEED = 4242  # the one request the injected fault breaks
FAIL_AFTER = 3  # output tokens it produces before its step raises


class InjectedFault(RuntimeError):
    pass


def break_marked_request(seqs) -> None:
    for seq in seqs:
        if seq.params.seed == FAULTY_SEED and seq.num_output_tokens >= FAIL_AFTER:
            raise InjectedFault("injected fault in the model step")


def chat_body(text: str, max_tokens: int = 24, **extra) -> dict:
    return {
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }


async def streamed(client: httpx.AsyncClient, body: dict) -> list[dict]:
    events = []
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


def answer(response: httpx.Response) -> tuple[str, str]:
    message = response.json()["choices"][0]["message"]
    return message["reasoning_content"] or "", message["content"] or ""


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with RunningServer(tiny_model_dir, max_num_seqs=8) as running:
        runner = running.engine.engine.runner
        run = runner.run

        def run_with_fault(batch):  # the fault is raised inside the engine's model step
            break_marked_request(batch.seqs)
            return run(batch)

        runner.run = run_with_fault
        yield running


def test_a_faulty_request_fails_alone_whole_and_streamed(server):
    prompts = [f"request {i}: " + "tell me more " * i for i in range(4)]

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            alone = [answer(await client.post("/v1/chat/completions", json=chat_body(p))) for p in prompts]
            bad = chat_body("this one breaks", seed=FAULTY_SEED)
            results = await asyncio.gather(
                client.post("/v1/chat/completions", json=bad),
                streamed(client, bad),
                *(client.post("/v1/chat/completions", json=chat_body(p)) for p in prompts),
            )
            after = await client.post("/v1/chat/completions", json=chat_body(prompts[0]))
            return alone, results, after

    alone, (whole, events, *together), after = asyncio.run(scenario())
    assert whole.status_code == 500
    error = whole.json()["error"]
    assert error["type"] == "server_error" and "injected fault" in error["message"]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant", "the stream had begun"
    assert events[-2]["choices"][0]["finish_reason"] == "error"
    assert "injected fault" in events[-1]["error"]["message"]
    assert [answer(r) for r in together] == alone, "the concurrent requests are untouched"
    assert answer(after) == alone[0], "the engine serves on after the fault"
    stats = server.engine.stats()
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"]


def test_health_stays_up_after_faults(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(3):
            r = client.post("/v1/chat/completions", json=chat_body("again", seed=FAULTY_SEED))
            assert r.status_code == 500
        assert client.get("/health").json() == {"status": "ok"}
        assert server.engine.is_alive()


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def wait_until_listening(proc: subprocess.Popen, url: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("the server did not come up")


async def until_first_token(client: httpx.AsyncClient, body: dict, started: asyncio.Event) -> dict:
    """Stream one request; note whether it ended with [DONE] or cleanly by an error/close."""
    chunks, done, error = 0, False, None
    try:
        async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    event = json.loads(line[6:])
                    error = error or event.get("error")
                    chunks += 1
                    started.set()
    except (httpx.RemoteProtocolError, httpx.ReadError) as e:  # the server closed the connection
        error = repr(e)
    return {"chunks": chunks, "done": done, "error": error}


def test_sigterm_with_requests_in_flight(tiny_model_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "qthink", "serve", str(tiny_model_dir), "--port", str(port)]
    command += ["--dtype", "float32", "--max-model-len", "512", "--kv-cache-memory", str(8 << 20)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_listening(proc, url)
        children = children_of(proc.pid)

        async def scenario():
            started = asyncio.Event()
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                long = chat_body("long answer", max_tokens=400)
                tasks = [asyncio.create_task(until_first_token(client, long, started)) for _ in range(4)]
                await asyncio.wait_for(started.wait(), 30)
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks)

        clients = asyncio.run(scenario())
        stopped_at = time.time()
        code = proc.wait(timeout=30)
        took = time.time() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # uvicorn drains for up to 10 s (timeout_graceful_shutdown), then re-raises SIGTERM
    assert code in (0, -signal.SIGTERM), proc.stderr.read().decode()[-2000:]
    assert took < 15
    for outcome in clients:
        assert outcome["done"] or outcome["error"], outcome  # complete, or ended with a clean error
    assert all(not os.path.exists(f"/proc/{child}") for child in children), "no orphans"
