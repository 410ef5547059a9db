"""Real qthink servers on free localhost ports for tests: in a thread, or a subprocess to wait on."""

import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import uvicorn

from qthink.engine.async_engine import AsyncEngine
from qthink.server.app import build_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    def __init__(self, model_dir, api_key=None, **engine_kwargs):
        engine_kwargs = {
            "dtype": "float32",
            "max_model_len": 512,
            "kv_cache_memory": 8 << 20,
            **engine_kwargs,
        }
        self.engine = AsyncEngine(str(model_dir), **engine_kwargs)
        self.app = build_app(self.engine, "qthink-test", api_key=api_key)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"server exited with {proc.returncode}:\n{output}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not become healthy")


def stop(proc: subprocess.Popen, sig: signal.Signals) -> str:
    proc.send_signal(sig)
    try:
        log, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return log


@contextmanager
def serving(app):
    """Another app over the same engine, on its own port; lifespan off, so it leaves the engine running."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve_subprocess(
    model_dir, port: int, log, max_model_len: int = 512, extra: tuple[str, ...] = ()
) -> subprocess.Popen:
    """`extra`: more `qthink serve` arguments, after the ones here (a later one wins)."""
    cmd = [sys.executable, "-m", "qthink", "serve", str(model_dir), "--port", str(port), "--dtype", "float32"]
    cmd += ["--max-model-len", str(max_model_len), "--kv-cache-memory", str(16 << 20), "--max-num-seqs", "8"]
    return subprocess.Popen([*cmd, *extra], stdout=log, stderr=subprocess.STDOUT)
