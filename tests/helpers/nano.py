"""A real `qthink serve` of qthink-nano in a subprocess, for tests of the wire protocols."""

import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

from qthink.nano.data import TOOLS as NANO_TOOLS
from tests.helpers.server import free_port

__all__ = ["NANO_TOOLS", "nano_available", "serve_nano"]


def nano_available() -> bool:
    from qthink.nano.build import ARTIFACT

    return ARTIFACT.is_file()


@contextmanager
def serve_nano(*args: str):
    """Yields the server's base URL (no /v1); extra `qthink serve` arguments pass through."""
    from qthink.demo import default_model_path

    port = free_port()
    command = [sys.executable, "-m", "qthink", "serve", str(default_model_path()), "--port", str(port)]
    command += ["--served-model-name", "nano", "--max-model-len", "1024", *args]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"qthink serve did not start (exit code {proc.poll()})")
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
