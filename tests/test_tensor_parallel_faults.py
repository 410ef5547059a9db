"""A tensor-parallel rank that dies fails the engine at once with that rank's error; scripts on
standard input run two ranks; a server whose rank died answers 503 on /health and exits."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest
import torch
import torch.distributed as dist

from qthink import LLM, SamplingParams
from qthink.config import EngineConfig
from qthink.engine.engine import LLMEngine
from qthink.engine.rank_supervisor import RankDiedError, Ranks
from qthink.engine.tensor_parallel import init_group, rendezvous_store
from tests.helpers.server import RunningServer, free_port, wait_healthy

WORKER = b"qthink.engine.tp_worker"
SMALL = dict(dtype="float32", max_model_len=2048, kv_cache_memory=4 << 20)


def rank_processes(pid: int) -> list[int]:
    """The tensor-parallel ranks among `pid`'s children."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []
    return [c for c in children if WORKER in _cmdline(c)]


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie (an orphan's reaper may be slow, or absent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_first_rank_when_it_starts(stop: threading.Event) -> None:
    while not stop.is_set():
        for pid in rank_processes(os.getpid()):
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.005)


def test_ranks_end_when_rank_0_is_killed(tiny_model_dir):
    """Rank 0 killed outright (no atexit, no close): its rank notices by itself and exits."""
    script = textwrap.dedent(f"""
        import time
        from qthink import LLM
        llm = LLM(model={str(tiny_model_dir)!r}, tensor_parallel_size=2, dtype="float32",
                  max_model_len=128, kv_cache_memory=1 << 20)
        print(llm.engine.ranks.processes[0].process.pid, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/"
    )
    try:
        proc.stdin.write(script)  # type: ignore[union-attr]  # stdin=PIPE
        proc.stdin.close()  # type: ignore[union-attr]
        rank1 = int(proc.stdout.readline())  # type: ignore[union-attr]  # stdout=PIPE
        assert not gone(rank1)
        proc.kill()
        proc.wait()
        assert wait_gone(rank1, 10), "the rank outlived rank 0"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_script_read_from_stdin_runs_two_ranks(tiny_model_dir):
    script = textwrap.dedent(f"""
        from qthink import LLM, SamplingParams
        llm = LLM(model={str(tiny_model_dir)!r}, tensor_parallel_size=2, dtype="float32",
                  max_model_len=128, kv_cache_memory=1 << 20)
        out = llm.generate([[151644, 872, 198]], SamplingParams(max_tokens=4, ignore_eos=True))
        print(len(out[0].outputs[0].token_ids))
    """)
    run = subprocess.run(
        [sys.executable, "-"], input=script, capture_output=True, text=True, timeout=180, cwd="/"
    )
    assert run.returncode == 0 and run.stdout.split() == ["4"], run.stderr[-3000:]
    assert "Fatal Python error" not in run.stderr and "Traceback" not in run.stderr, run.stderr[-3000:]


def test_rank_killed_while_starting_fails_at_once(tiny_model_dir):
    stop = threading.Event()
    killer = threading.Thread(target=kill_first_rank_when_it_starts, args=(stop,), daemon=True)
    killer.start()
    started = time.monotonic()
    try:
        with pytest.raises(RankDiedError, match="rank 1 was killed by SIGKILL while starting") as caught:
            LLMEngine(str(tiny_model_dir), tensor_parallel_size=2, **SMALL)
    finally:
        stop.set()
        killer.join()
    assert time.monotonic() - started < 30
    assert caught.value.rank == 1 and caught.value.returncode == -signal.SIGKILL
    assert not dist.is_initialized() and rank_processes(os.getpid()) == []
    LLMEngine(str(tiny_model_dir), tensor_parallel_size=2, **SMALL).close()  # this process can retry


def test_rank_error_at_start_is_reported_with_its_traceback(tmp_path):
    """A rank that raises while starting sends its traceback; rank 0's wait ends with it."""
    store = rendezvous_store()
    missing = tmp_path / "no-such-model"
    args = (2, store.port, str(missing), torch.float32, "cpu", EngineConfig(num_threads=1), (None, 128))
    ranks = Ranks.start(2, args)
    try:
        started = time.monotonic()
        with pytest.raises(RankDiedError) as caught:
            with ranks.watching():
                init_group(0, 2, ranks.store(store), torch.device("cpu"))
                dist.barrier()
        took = time.monotonic() - started
    finally:
        ranks.stop()
    message = str(caught.value)
    assert message.startswith("tensor-parallel rank 1 exited with status 1 while starting:"), message
    assert "Traceback (most recent call last)" in message and str(missing) in message
    assert took < 30 and not dist.is_initialized()


def test_rank_killed_mid_generation_fails_at_once(tiny_model_dir):
    llm = LLM(model=str(tiny_model_dir), tensor_parallel_size=2, **SMALL)
    rank1 = llm.engine.ranks.processes[0].process  # type: ignore[union-attr]  # two ranks
    killed_at: list[float] = []

    def kill_after_some_tokens():
        while llm.engine.generation_tokens_total < 20:
            time.sleep(0.005)
        killed_at.append(time.monotonic())
        rank1.kill()

    threading.Thread(target=kill_after_some_tokens, daemon=True).start()
    params = SamplingParams(temperature=0, max_tokens=1500, ignore_eos=True)
    prompt = {"prompt_token_ids": [151644, 872, 198, 3000]}
    with pytest.raises(RankDiedError, match="rank 1 was killed by SIGKILL while serving"):
        llm.generate([prompt, prompt], params)
    assert time.monotonic() - killed_at[0] < 5
    assert not dist.is_initialized()  # torn down at once, so this process can start another
    with pytest.raises(RankDiedError):  # the engine stays failed
        llm.generate([prompt], params)
    assert gone(rank1.pid) and not dist.is_initialized()


def test_server_with_a_dead_rank_is_unhealthy(tiny_model_dir):
    with RunningServer(tiny_model_dir, tensor_parallel_size=2) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/health").status_code == 200
            rank1 = server.engine.engine.ranks.processes[0].process  # type: ignore[union-attr]
            rank1.kill()  # while idle: the engine notices without a request
            deadline = time.monotonic() + 5
            while client.get("/health").status_code != 503:
                assert time.monotonic() < deadline, "/health still says ok"
                time.sleep(0.05)
            body = {"model": "qthink-test", "messages": [{"role": "user", "content": "hi"}]}
            r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 503
    assert "tensor-parallel rank 1 was killed by SIGKILL" in r.json()["error"]["message"]
    assert not server.engine.is_alive() and gone(rank1.pid)


@pytest.mark.slow
def test_serve_exits_when_a_rank_dies_mid_stream(tiny_model_dir, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "qthink", "serve", str(tiny_model_dir), "--port", str(port)]
    cmd += ["--dtype", "float32", "--max-model-len", "2048", "--kv-cache-memory", str(4 << 20)]
    cmd += ["--tensor-parallel-size", "2"]
    log_file = tmp_path / "serve.log"
    with open(log_file, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(proc, url)
        ranks = rank_processes(proc.pid)
        assert len(ranks) == 1
        body = {"messages": [{"role": "user", "content": "count"}], "max_tokens": 1500, "stream": True}
        events = []
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json={**body, "ignore_eos": True}, timeout=60
        ) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                events.append(json.loads(line[6:]))
                if len(events) == 1:  # the request runs: its first chunk came
                    os.kill(ranks[0], signal.SIGKILL)
                    killed_at = time.monotonic()
        code = proc.wait(timeout=30)
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_file.read_text()
    assert code == 1, log[-3000:]
    assert took < 15, log[-3000:]
    assert "the engine failed (tensor-parallel rank 1 was killed by SIGKILL while serving)" in log
    assert "rank 1 was killed by SIGKILL" in events[-1]["error"]["message"]  # not ended silently
    assert gone(ranks[0])


@pytest.mark.slow
def test_serve_whose_rank_dies_while_starting_exits_with_its_error(tiny_model_dir):
    cmd = [sys.executable, "-m", "qthink", "serve", str(tiny_model_dir), "--port", str(free_port())]
    cmd += ["--dtype", "float32", "--max-model-len", "128", "--tensor-parallel-size", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not (ranks := rank_processes(proc.pid)):
            assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]  # stderr=PIPE
            time.sleep(0.005)
        os.kill(ranks[0], signal.SIGKILL)
        killed_at = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1 and took < 10, err[-3000:]
    assert "qthink serve: error: tensor-parallel rank 1 was killed by SIGKILL while starting" in err
    assert "Traceback" not in err, err[-3000:]


@pytest.mark.slow
def test_sigterm_to_the_whole_group_drains_the_server(tiny_model_dir, tmp_path):
    """A stop that signals every process (systemd's default): the rank ignores it, the server
    finishes its stream, then stops the rank; no rank death is reported."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "qthink", "serve", str(tiny_model_dir), "--port", str(port)]
    cmd += ["--dtype", "float32", "--max-model-len", "512", "--tensor-parallel-size", "2"]
    log_file = tmp_path / "serve.log"
    with open(log_file, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(proc, url)
        rank1 = rank_processes(proc.pid)[0]
        body = {"messages": [{"role": "user", "content": "count"}], "max_tokens": 60, "stream": True}
        lines = []
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json={**body, "ignore_eos": True}, timeout=60
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and not lines:
                    os.killpg(proc.pid, signal.SIGTERM)
                lines.append(line)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = log_file.read_text()
    assert code in (0, -signal.SIGTERM), log[-3000:]
    assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]", lines[-3:]
    assert not any('"error"' in line for line in lines), lines[-3:]
    assert "tensor-parallel rank" not in log.replace("tensor parallel: rank", ""), log[-3000:]
    assert wait_gone(rank1, 10)
