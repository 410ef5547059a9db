"""`code_interpreter`: Python in a persistent Jupyter kernel jailed by the operating system (bubblewrap)."""

import base64
import binascii
import os
import queue
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import cast

from qthink.agent.kernel_process import KernelLimits, KernelProcess
from qthink.agent.tools import Tool, register_tool
from qthink.sandbox.jail import SandboxUnavailable, jail_problem, work_dir_problem

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAX_TRACEBACK = 3000
_INTERRUPT_GRACE = 5.0
CONFIG_KEYS = {
    "work_dir",
    "timeout",
    "allow_network",
    "allow_unsafe",
    "env",
    "max_output_chars",
    "max_images",
    "max_image_mb",
}
_DIED = "died (a memory, CPU-time, file-size or process limit, or the code ended it)"


@register_tool("code_interpreter")
class CodeInterpreter(Tool):
    """Runs Python code in a Jupyter kernel that keeps its state between calls.

    The kernel runs in a bubblewrap jail (see `qthink.sandbox` and docs/security.md); where none can
    be made the tool refuses to start unless cfg `allow_unsafe` is true. cfg: `work_dir`
    (default: a new temporary dir), `timeout` seconds per call (60), `allow_network`
    (False), `allow_unsafe` (False), `env` (extra variables for the kernel), the limits of
    `KernelLimits` (`memory_mb`, `cpu_seconds`, `file_mb`, `open_files`, `processes`,
    `tmp_mb`, `shm_mb`), `max_output_chars` (20000), `max_images` per call (8) and
    `max_image_mb` (8).
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
        if unknown := sorted(set(self.cfg) - CONFIG_KEYS - set(KernelLimits.__dataclass_fields__)):
            raise ValueError(f"unknown code_interpreter settings: {', '.join(unknown)}")
        problem = jail_problem()
        if problem and not self.cfg.get("allow_unsafe"):
            raise SandboxUnavailable(
                f"the code interpreter needs an OS jail and this machine cannot make one: {problem}. "
                "To run model-written code without one (it can then do anything your user can), pass "
                "--unsafe-code-interpreter (allow_unsafe=True)."
            )
        self.jailed = problem is None
        if problem:
            print(f"warning: the code interpreter runs WITHOUT a jail: {problem}", file=sys.stderr)
        self.timeout = float(self.cfg.get("timeout", 60))
        self.work_dir = Path(self.cfg.get("work_dir") or tempfile.mkdtemp(prefix="qthink-ci-")).resolve()
        if why := work_dir_problem(self.work_dir):
            raise ValueError(f"{why}: choose a directory of its own for the code interpreter")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        names = KernelLimits.__dataclass_fields__
        self.limits = KernelLimits(**{k: int(v) for k, v in self.cfg.items() if k in names})
        self.max_output = int(self.cfg.get("max_output_chars", 20000))
        self.max_images = int(self.cfg.get("max_images", 8))
        self.max_image_bytes = int(float(self.cfg.get("max_image_mb", 8)) * (1 << 20))
        self._lock = threading.Lock()  # one kernel runs one cell at a time, even for parallel calls
        self.kernel: KernelProcess | None = None
        self._warned = False
        self._next_image = 1

    def call(self, params: dict) -> str:
        with self._lock:
            if self.kernel is None or not self.kernel.alive():
                self._start()
            return self.execute(params["code"])

    def execute(self, code: str) -> str:
        """Run code; at the timeout the cell is interrupted, and the jail killed and restarted when
        the cell does not stop or leaves threads or processes running."""
        kernel = cast(KernelProcess, self.kernel)  # `call` starts it first
        tasks_before = kernel.task_count()
        msg_id = kernel.client.execute(code, allow_stdin=False, stop_on_error=False)
        out = _Output(self.max_output)
        deadline, interrupted = time.monotonic() + self.timeout, False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not interrupted:
                kernel.interrupt()
                interrupted, deadline = True, time.monotonic() + _INTERRUPT_GRACE
                continue
            if remaining <= 0 or not kernel.alive():
                return self._restart_after(
                    out.text(), "did not stop after an interrupt" if kernel.alive() else _DIED
                )
            try:
                msg = kernel.client.get_iopub_msg(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            except Exception:  # noqa: BLE001 - a message the kernel forged to break the parser
                return self._restart_after(out.text(), "sent a malformed message")
            try:
                if _is_idle(msg, msg_id):
                    break
                if msg["parent_header"].get("msg_id") == msg_id:
                    self._render(msg, interrupted, out)
            except (KeyError, TypeError, AttributeError, ValueError):
                return self._restart_after(out.text(), "sent a malformed message")
        if interrupted:
            out.add(f"Error: the code ran longer than {self.timeout:g} s and was interrupted.")
            if not _settles(kernel, tasks_before):
                return self._restart_after(
                    out.text(), "kept threads or processes running after the interrupt"
                )
        return out.text() or "(no output)"

    def close(self) -> None:
        if self.kernel is not None:
            self.kernel.kill()
        self.kernel = None

    def _start(self) -> None:
        self.close()
        env = {str(k): str(v) for k, v in (self.cfg.get("env") or {}).items()}
        allow_network = bool(self.cfg.get("allow_network"))
        self.kernel = KernelProcess(self.work_dir, self.limits, self.jailed, allow_network, env)
        if not self.kernel.processes_capped and not self._warned:
            self._warned = True
            print(
                "warning: the code interpreter's processes are not capped: run as root, where no cgroup "
                "could be made (see qthink agent --check-sandbox)",
                file=sys.stderr,
            )

    def _restart_after(self, text: str, why: str) -> str:
        self._start()
        note = f"Error: the kernel {why}; it was stopped and restarted clean: its state is lost."
        return f"{text}\n{note}" if text else note

    def _render(self, msg: dict, interrupted: bool, out: "_Output") -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out.add(str(content.get("text", "")).rstrip("\n"))
        elif kind in ("execute_result", "display_data") and isinstance(content.get("data"), dict):
            out.add(self._render_data(content["data"], out))
        elif kind == "error":
            if interrupted and content.get("ename") == "KeyboardInterrupt":
                return
            # The tail holds the failing line and the exception: that is what the model needs.
            out.add(_ANSI.sub("", "\n".join(map(str, content.get("traceback", []))))[-_MAX_TRACEBACK:])

    def _render_data(self, data: dict, out: "_Output") -> str:
        png = data.get("image/png")
        if isinstance(png, str):
            if out.images >= self.max_images:
                return f"[image dropped: more than {self.max_images} in one call]"
            out.images += 1
            if len(png) > self.max_image_bytes * 4 // 3 + 4:
                return f"[image dropped: larger than {self.max_image_bytes / (1 << 20):g} MB]"
            try:
                raw = base64.b64decode(png.replace("\n", ""), validate=True)
            except (binascii.Error, ValueError):
                return "[image dropped: not valid base64]"
            path = save_image(self.work_dir, raw, first=self._next_image)
            self._next_image = int(path.stem.removeprefix("image_")) + 1
            return f"![image]({path})"
        return str(data.get("text/plain", ""))


def _settles(kernel: KernelProcess, tasks: int, wait: float = 1.0) -> bool:
    """Whether the jail gets back to `tasks` threads and processes within `wait` seconds
    (an interrupted child may take a moment to exit)."""
    deadline = time.monotonic() + wait
    while kernel.task_count() > tasks:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _is_idle(msg: dict, msg_id: str) -> bool:
    return (
        msg["parent_header"].get("msg_id") == msg_id
        and msg["msg_type"] == "status"
        and msg["content"].get("execution_state") == "idle"
    )


class _Output:
    """A call's output, capped: past the cap the rest is counted and a notice says so."""

    def __init__(self, cap: int):
        self.parts: list[str]
        self.cap, self.parts, self.size, self.dropped, self.images = cap, [], 0, 0, 0

    def add(self, part: str) -> None:
        if not part:
            return
        room = self.cap - self.size
        if room <= 0:
            self.dropped += len(part)
            return
        self.parts.append(part[:room])
        self.size += min(len(part), room) + 1
        self.dropped += max(0, len(part) - room)

    def text(self) -> str:
        body = "\n".join(self.parts)
        if self.dropped:
            body += f"\n[output truncated: {self.dropped} more characters]"
        return body


def save_image(work_dir: Path, data: bytes, first: int = 1) -> Path:
    """Write a PNG the kernel sent as a new file in the working dir: a name the parent picks,
    created exclusively and without following links, so nothing the jail left there is written through."""
    dir_fd = os.open(work_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for n in range(first, first + 10000):
            name = f"image_{n}.png"
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return work_dir / name
        raise OSError("no free image name in the working directory")
    finally:
        os.close(dir_fd)
