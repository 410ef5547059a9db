"""A real qthink server on a free localhost port, in a background thread, for tests."""

import socket
import threading
import time

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
