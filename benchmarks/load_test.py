"""Load test: many concurrent streaming chat clients, some leaving mid-stream, against a real server.

Checks, per round: every request that ran to its end streamed the same text as when it ran alone
(greedy), /health answered within the bound throughout (polled concurrently), every KV block is
free once the round is over, and the process RSS stays flat across rounds. Loopback only; the
number of clients, rounds and tokens, and the wall time, are all bounded.

    PYTHONPATH=. python benchmarks/load_test.py        # 64 clients, 3 rounds, a tiny random model
    PYTHONPATH=. python benchmarks/load_test.py --model DIR --clients 32 --rounds 5
"""

import argparse
import asyncio
import json
import random
import resource
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn

from qthink.engine.async_engine import AsyncEngine
from qthink.random_checkpoint import tiny_config, write_random_checkpoint
from qthink.server.app import build_app

PROMPT_WORDS = (1, 6, 24, 96)  # mixed prompt lengths, in words
VOCABULARY = ("why", "sky", "blue", "think", "twice")
HEALTH_BOUND_S = 1.0


@dataclass
class Job:
    index: int
    prompt: str
    max_tokens: int
    leave_after: int | None  # close the stream after this many chunks; None: read to the end


@dataclass
class RoundReport:
    finished: int = 0
    mismatched: list[int] = field(default_factory=list)
    disconnects: int = 0
    failures: list[str] = field(default_factory=list)
    health_polls: int = 0
    health_max_s: float = 0.0
    kv_free: bool = False
    rss_mib: float = 0.0
    seconds: float = 0.0


class Server:
    """A qthink server on a free loopback port, in a thread of this process (so its RSS is ours)."""

    def __init__(self, engine: AsyncEngine, port: int):
        config = uvicorn.Config(build_app(engine, "load"), host="127.0.0.1", port=port, log_level="warning")
        self.uvicorn = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.uvicorn.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(timeout=30)


def make_jobs(clients: int, max_tokens: int, disconnect_rate: float, rng: random.Random) -> list[Job]:
    jobs = []
    for i in range(clients):
        words = rng.choice(PROMPT_WORDS)
        prompt = f"client {i}: " + " ".join(rng.choice(VOCABULARY) for _ in range(words))
        leave = rng.randint(1, 4) if rng.random() < disconnect_rate else None
        jobs.append(Job(i, prompt, rng.randint(max(2, max_tokens // 4), max_tokens), leave))
    return jobs


def request_body(job: Job, stream: bool) -> dict:
    return {
        "messages": [{"role": "user", "content": job.prompt}],
        "max_tokens": job.max_tokens,
        "temperature": 0,
        "ignore_eos": True,  # a fixed length: the work of a round does not depend on the weights
        "stream": stream,
    }


async def alone(client: httpx.AsyncClient, job: Job) -> tuple[str, str]:
    r = await client.post("/v1/chat/completions", json=request_body(job, stream=False))
    r.raise_for_status()
    message = r.json()["choices"][0]["message"]
    return message.get("reasoning_content") or "", message.get("content") or ""


async def streamed(client: httpx.AsyncClient, job: Job) -> tuple[str, str] | None:
    """The streamed (reasoning, content); None when this client left early on purpose."""
    reasoning, content, chunks = [], [], 0
    async with client.stream("POST", "/v1/chat/completions", json=request_body(job, stream=True)) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            delta = event["choices"][0]["delta"]
            reasoning.append(delta.get("reasoning_content") or "")
            content.append(delta.get("content") or "")
            chunks += 1
            if job.leave_after is not None and chunks >= job.leave_after:
                return None  # leaving the block closes the connection mid-stream
    return "".join(reasoning), "".join(content)


async def poll_health(url: str, stop: asyncio.Event, report: RoundReport) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=HEALTH_BOUND_S * 5) as client:
        while not stop.is_set():
            started = time.monotonic()
            r = await client.get("/health")
            took = time.monotonic() - started
            if r.status_code != 200:
                report.failures.append(f"/health answered {r.status_code}")
            report.health_polls += 1
            report.health_max_s = max(report.health_max_s, took)
            await asyncio.sleep(0.05)


async def run_round(
    url: str, engine: AsyncEngine, jobs: list[Job], expected: dict, limit_s: float
) -> RoundReport:
    report = RoundReport()
    stop = asyncio.Event()
    started = time.monotonic()
    limits = httpx.Limits(max_connections=len(jobs) + 4, max_keepalive_connections=len(jobs) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=limit_s, limits=limits) as client:
        health = asyncio.create_task(poll_health(url, stop, report))
        results = await asyncio.wait_for(
            asyncio.gather(*(streamed(client, j) for j in jobs), return_exceptions=True), limit_s
        )
        await asyncio.sleep(0.2)  # one more poll after the last client
        stop.set()
        await health
    for job, result in zip(jobs, results):
        if isinstance(result, Exception):
            report.failures.append(f"client {job.index}: {type(result).__name__}: {result}")
        elif result is None:
            report.disconnects += 1
        else:
            report.finished += 1
            if result != expected[job.index]:
                report.mismatched.append(job.index)
    report.kv_free = await blocks_all_free(engine)
    report.rss_mib = rss_mib()
    report.seconds = time.monotonic() - started
    return report


async def blocks_all_free(engine: AsyncEngine, wait_s: float = 10) -> bool:
    """Aborts of departed clients reach the engine thread asynchronously: give them a moment."""
    deadline = time.monotonic() + wait_s
    while True:
        stats = engine.stats()
        idle = stats["num_running"] == 0 and stats["num_waiting"] == 0
        if idle and stats["kv_blocks_free"] == stats["kv_blocks_total"]:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


def rss_mib() -> float:
    """RSS now, from /proc (the high-water mark would hide a later release)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


async def load_test(url: str, engine: AsyncEngine, args) -> list[RoundReport]:
    rng = random.Random(args.seed)
    jobs = make_jobs(args.clients, args.max_tokens, args.disconnect_rate, rng)
    async with httpx.AsyncClient(base_url=url, timeout=args.time_limit) as client:
        expected = {job.index: await alone(client, job) for job in jobs}
    reports = []
    for _ in range(args.rounds):
        for job in jobs:  # a new set of departures each round; the same requests, so the same answers
            job.leave_after = rng.randint(1, 4) if rng.random() < args.disconnect_rate else None
        reports.append(await run_round(url, engine, jobs, expected, args.time_limit))
    return reports


def check(
    reports: list[RoundReport], rss_growth_mib: float, health_bound_s: float = HEALTH_BOUND_S
) -> list[str]:
    """Everything that went wrong, as sentences; empty when the server held."""
    problems = []
    for n, r in enumerate(reports, 1):
        problems += [f"round {n}: {f}" for f in r.failures]
        if r.mismatched:
            problems.append(f"round {n}: clients {r.mismatched} streamed other text than alone")
        if r.health_max_s > health_bound_s:
            problems.append(f"round {n}: /health took {r.health_max_s:.2f} s")
        if not r.kv_free:
            problems.append(f"round {n}: KV blocks still held after the round")
    # round 1 warms allocator pools and caches; later rounds must not keep growing
    if len(reports) > 2 and reports[-1].rss_mib - reports[1].rss_mib > rss_growth_mib:
        problems.append(f"RSS grew from {reports[1].rss_mib:.0f} to {reports[-1].rss_mib:.0f} MiB")
    return problems


def print_reports(reports: list[RoundReport]) -> None:
    print("round  finished  disconnects  mismatched  health_polls  health_max_ms  kv_free  rss_mib  seconds")
    for n, r in enumerate(reports, 1):
        print(
            f"{n:>5}  {r.finished:>8}  {r.disconnects:>11}  {len(r.mismatched):>10}  {r.health_polls:>12}  "
            f"{r.health_max_s * 1000:>13.1f}  {r.kv_free!s:>7}  {r.rss_mib:>7.1f}  {r.seconds:>7.1f}"
        )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a checkpoint folder; default: a tiny random Qwen3 written to a temp dir")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--disconnect-rate", type=float, default=0.25)
    p.add_argument("--time-limit", type=float, default=300, help="seconds one round may take")
    p.add_argument("--rss-growth-mib", type=float, default=64, help="RSS growth allowed after round 2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    return p.parse_args(argv)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_load(args) -> list[RoundReport]:
    """Start an engine and a server in this process, run the rounds, stop them."""
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or str(write_random_checkpoint(Path(scratch) / "tiny", tiny_config(), seed=0))
        engine = AsyncEngine(
            model, dtype="float32", max_model_len=512, max_num_seqs=args.clients, kv_cache_memory=64 << 20
        )
        with Server(engine, args.port or free_port()) as server:
            return asyncio.run(load_test(server.url, engine, args))


def main(argv=None) -> int:
    args = parse_args(argv)
    reports = serve_and_load(args)
    print_reports(reports)
    held = sum(r.finished for r in reports)
    left = sum(r.disconnects for r in reports)
    print(f"requests held to the end: {held}, disconnects survived: {left}")
    problems = check(reports, args.rss_growth_mib)
    for problem in problems:
        print("FAIL:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
