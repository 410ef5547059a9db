"""`code_interpreter`: Python in a persistent, limited Jupyter kernel with its own working directory."""

import base64
import functools
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from qthink.agent.tools import Tool, register_tool

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SPEC_NAME = "qthink-sandbox"
_MAX_TRACEBACK = 3000
_UNSHARE = ["unshare", "--net", "--map-root-user"]


@register_tool("code_interpreter")
class CodeInterpreter(Tool):
    """Runs Python code in a Jupyter kernel that keeps its state between calls.

    cfg: `work_dir` (default: a new temporary dir), `timeout` seconds per call (60),
    `memory_mb` address-space cap (4096), `cpu_seconds` CPU-time cap for the kernel's
    life (600), `allow_network` (False), `allow_outside_files` (False),
    `network_namespace` (True: use one when it can be made). Network, files
    outside the working dir and new processes are refused by audit hooks, which guard
    Python code only (see `sandbox_guard`); memory and CPU limits are `setrlimit` caps.
    Without network, where `unshare` can make a network namespace (root, or unprivileged
    user namespaces), the kernel also runs in one with no interfaces up, which native code
    cannot get around either; the kernel then talks to us over Unix sockets (ZMQ ipc).
    """

    description = (
        "Run Python code in a persistent Jupyter kernel. Returns stdout, the value of the last "
        "expression, errors, and the paths of any plots saved as PNG files."
    )
    parameters = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "The Python code to run."}},
        "required": ["code"],
    }

    def __init__(self, cfg: dict | None = None):
        super().__init__(cfg)
        self.timeout = float(self.cfg.get("timeout", 60))
        self.work_dir = Path(self.cfg.get("work_dir") or tempfile.mkdtemp(prefix="qthink-ci-")).resolve()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._private = Path(tempfile.mkdtemp(prefix="qthink-kernel-"))
        self._images = 0
        wants_namespace = not self.cfg.get("allow_network") and self.cfg.get("network_namespace", True)
        self.network_isolated = bool(wants_namespace) and network_namespace_available()
        self._lock = threading.Lock()  # one kernel runs one cell at a time, even for parallel calls
        self.km = None
        self.kc = None

    def call(self, params: dict) -> str:
        with self._lock:
            if self.km is None or not self.km.is_alive():
                self._start()
            return self.execute(params["code"])

    def execute(self, code: str) -> str:
        """Run code; at the timeout the kernel is interrupted (and restarted if it will not stop)."""
        msg_id = self.kc.execute(code, allow_stdin=False, stop_on_error=False)
        parts, deadline, interrupted = [], time.monotonic() + self.timeout, False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not interrupted:
                self.km.interrupt_kernel()
                interrupted, deadline = True, time.monotonic() + 10
                continue
            if remaining <= 0 or not self.km.is_alive():
                return self._restart_after(self._join(parts, interrupted), interrupted)
            try:
                msg = self.kc.get_iopub_msg(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
            parts.extend(self._render(msg, interrupted))
        return self._join(parts, interrupted) or "(no output)"

    def _join(self, parts: list[str], interrupted: bool) -> str:
        if interrupted:
            parts = [*parts, f"Error: the code ran longer than {self.timeout:g} s and was interrupted."]
        return "\n".join(p for p in parts if p)

    def close(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        if self.km is not None and self.km.has_kernel:
            self.km.shutdown_kernel(now=True)
        self.km = self.kc = None
        shutil.rmtree(self._private, ignore_errors=True)

    def _restart_after(self, text: str, interrupted: bool) -> str:
        why = "did not stop after an interrupt" if interrupted and self.km.is_alive() else "died"
        self.close()
        self._private.mkdir(parents=True, exist_ok=True)
        self._start()
        return f"{text}\nError: the kernel {why} (memory or CPU limit?) and was restarted; its state is lost."

    def _render(self, msg: dict, interrupted: bool) -> list[str]:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            return [content["text"].rstrip("\n")]
        if kind in ("execute_result", "display_data"):
            return self._render_data(content["data"])
        if kind == "error":
            if interrupted and content["ename"] == "KeyboardInterrupt":
                return []
            # The tail holds the failing line and the exception: that is what the model needs.
            return [_ANSI.sub("", "\n".join(content["traceback"]))[-_MAX_TRACEBACK:]]
        return []

    def _render_data(self, data: dict) -> list[str]:
        if "image/png" in data:
            self._images += 1
            path = self.work_dir / f"image_{self._images}.png"
            path.write_bytes(base64.b64decode(data["image/png"]))
            return [f"![image]({path})"]
        return [data.get("text/plain", "")]

    def _start(self) -> None:
        spec_dir = self._private / "kernels" / _SPEC_NAME
        spec_dir.mkdir(parents=True, exist_ok=True)
        (spec_dir / "kernel.json").write_text(json.dumps(self._kernel_spec()))
        specs = KernelSpecManager(kernel_dirs=[str(self._private / "kernels")])
        self.km = KernelManager(kernel_name=_SPEC_NAME, kernel_spec_manager=specs)
        if self.network_isolated:
            # A fresh network namespace has no loopback to reach us on: use Unix sockets.
            self.km.transport, self.km.ip = "ipc", str(self._private / "kernel-ipc")
        self.km.connection_file = str(self._private / "connection.json")
        self.km.start_kernel(cwd=str(self.work_dir))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        guard = (
            "import qthink.agent.sandbox_guard as _g; "
            f"_g.install({str(self.work_dir)!r}, allow_network={bool(self.cfg.get('allow_network'))}, "
            f"allow_outside_files={bool(self.cfg.get('allow_outside_files'))}); del _g"
        )
        self.kc.execute_interactive(guard, silent=True, timeout=60)

    def _kernel_spec(self) -> dict:
        argv = [
            *(_UNSHARE if self.network_isolated else []),
            sys.executable,
            "-m",
            "qthink.agent.kernel_launcher",
            f"--memory-mb={int(self.cfg.get('memory_mb', 4096))}",
            f"--cpu-seconds={int(self.cfg.get('cpu_seconds', 600))}",
            "-f",
            "{connection_file}",
            "--HistoryManager.enabled=False",
            "--IPKernelApp.log_level=ERROR",
        ]
        package_root = str(Path(__file__).resolve().parents[2])
        env = {
            "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
            "IPYTHONDIR": str(self._private / "ipython"),
            "MPLCONFIGDIR": str(self.work_dir / ".matplotlib"),
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "OPENBLAS_NUM_THREADS": "1",
        }
        return {"argv": argv, "display_name": "qthink sandbox", "language": "python", "env": env}


@functools.cache
def network_namespace_available() -> bool:
    """Whether `unshare` can give a process a network namespace of its own here."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*_UNSHARE, "true"], capture_output=True, timeout=10)
    return probe.returncode == 0
