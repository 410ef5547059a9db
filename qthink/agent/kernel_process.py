"""One IPython kernel process, jailed by bubblewrap (unjailed only when asked), and its client.

The kernel binds its ZMQ sockets as Unix sockets in a directory made fresh for each
start, so nothing is left from an earlier kernel. Everything it sends is untrusted: the
client's sockets refuse messages over a size cap and buffer only a few. `kill` ends the
whole jail: bwrap's PID namespace dies with its first process, and the cgroup (where one
could be made) is emptied with SIGKILL.
"""

import functools
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from qthink.sandbox.cgroup import KernelCgroup, make_cgroup
from qthink.sandbox.jail import BWRAP_ENV, JAIL_DIR, JailSpec, bwrap_argv, identity_files, jail_env
from qthink.sandbox.seccomp_filter import compile_filter

LAUNCHER = Path(__file__).with_name("kernel_launcher.py")
MAX_MESSAGE_BYTES = 16 << 20  # a larger message from the kernel drops the connection
RECEIVE_BUFFER_MESSAGES = 64
_PORTS: dict[str, Any] = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}
# The kernel's environment: nothing from ours, only these and the tool's `env`.
KERNEL_ENV = {
    "LANG": "C.UTF-8",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "IPYTHONDIR": "/tmp/ipython",
    "JUPYTER_RUNTIME_DIR": "/tmp/jupyter",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
_STDERR_CAP = 16 * 1024


@dataclass
class KernelLimits:
    """Resource caps for one kernel (megabytes, seconds, counts)."""

    memory_mb: int = 4096
    cpu_seconds: int = 600
    file_mb: int = 1024
    open_files: int = 1024
    processes: int = 256
    tmp_mb: int = 256
    shm_mb: int = 64

    def launcher_args(self) -> list[str]:
        names = ("memory_mb", "cpu_seconds", "file_mb", "open_files", "processes")
        return [f"--{n.replace('_', '-')}={getattr(self, n)}" for n in names]


class KernelStartError(RuntimeError):
    """The kernel did not come up; the message holds what it printed."""


class KernelProcess:
    """A started kernel: its process, its cgroup, its private directory and a connected client."""

    def __init__(self, work_dir: Path, limits: KernelLimits, jailed: bool, allow_network: bool, env: dict):
        self.work_dir, self.limits, self.jailed = work_dir, limits, jailed
        self.private = Path(tempfile.mkdtemp(prefix="qthink-kernel-"))
        self.cgroup: KernelCgroup | None = None
        self._tail = b""
        try:
            self.proc = self._launch(allow_network, env)
            self.client = self._connect()
        except BaseException:
            self.kill()
            raise

    def _launch(self, allow_network: bool, env: dict) -> subprocess.Popen:
        self._write_connection_files(allow_network)
        tasks = self.limits.processes + 64  # the kernel's own threads count too
        memory = (self.limits.memory_mb + self.limits.tmp_mb + self.limits.shm_mb + 256) << 20
        self.cgroup = make_cgroup(tasks, memory) if self.jailed else None
        with tempfile.TemporaryFile() as bpf:
            if self.jailed:
                bpf.write(compile_filter(deny_unix_sockets=allow_network))
                bpf.seek(0)
                argv, child_env, cwd = self._jailed_command(bpf.fileno(), allow_network, env)
            else:
                argv, child_env, cwd = self._unjailed_command(env)
            proc = _spawner().run(
                lambda: subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    pass_fds=(bpf.fileno(),) if self.jailed else (),
                    start_new_session=True,
                    env=child_env,
                    cwd=cwd,
                )
            )
        threading.Thread(target=self._keep_tail, args=(proc.stdout,), daemon=True).start()
        return proc

    def _jailed_command(self, seccomp_fd: int, allow_network: bool, env: dict) -> tuple[list, dict, None]:
        enter = _cgroup_entry(self.cgroup.procs_files) if self.cgroup else []
        argv = [*enter, *self._jail_argv(seccomp_fd, allow_network, env), sys.executable, "-I"]
        argv += [f"{JAIL_DIR}/kernel_launcher.py", *self._kernel_args(f"{JAIL_DIR}/connection.json")]
        return argv, dict(BWRAP_ENV), None

    def _unjailed_command(self, env: dict) -> tuple[list, dict, str]:
        connection = str(self.private / "jail-connection.json")
        argv = [
            sys.executable,
            "-I",
            str(LAUNCHER),
            f"--parent-pid={os.getpid()}",
            *self._kernel_args(connection),
        ]
        spec = JailSpec(self.work_dir, self.private / "ipc", {}, env=self._kernel_env(env))
        child_env = {**jail_env(spec), "HOME": str(self.private)}
        for name in ("IPYTHONDIR", "JUPYTER_RUNTIME_DIR", "TMPDIR"):
            child_env[name] = str(self.private / name.lower())
        return argv, child_env, str(self.work_dir)

    def _write_connection_files(self, allow_network: bool) -> None:
        """ZMQ over Unix sockets in a fresh directory; over the loopback when the jail shares the
        host's network, where it may make no Unix socket (the host's abstract ones would be in reach)."""
        sockets = self.private / "ipc"
        sockets.mkdir()
        key = secrets.token_hex(32).encode()
        host_file = str(self.private / "connection.json")
        info: Mapping[str, Any]
        if allow_network and self.jailed:
            _, info = write_connection_file(host_file, ip="127.0.0.1", key=key, transport="tcp")
        else:
            _, info = write_connection_file(
                host_file, ip=str(sockets / "kernel"), key=key, transport="ipc", **_PORTS
            )
            if self.jailed:
                info = {**info, "ip": f"{JAIL_DIR}/ipc/kernel"}
        info = {k: v.decode() if isinstance(v, bytes) else v for k, v in info.items()}
        (self.private / "jail-connection.json").write_text(json.dumps(info))

    def _keep_tail(self, stream) -> None:
        """Read what the kernel prints, keeping only the last few kilobytes (it is not trusted to stop)."""
        for chunk in iter(lambda: stream.read1(4096), b""):
            self._tail = (self._tail + chunk)[-_STDERR_CAP:]
        stream.close()

    def _jail_argv(self, seccomp_fd: int, allow_network: bool, env: dict) -> list[str]:
        files = identity_files(self.private)
        files[f"{JAIL_DIR}/kernel_launcher.py"] = LAUNCHER
        files[f"{JAIL_DIR}/connection.json"] = self.private / "jail-connection.json"
        spec = JailSpec(
            self.work_dir,
            self.private / "ipc",
            files,
            allow_network=allow_network,
            tmp_mb=self.limits.tmp_mb,
            shm_mb=self.limits.shm_mb,
            env=self._kernel_env(env),
        )
        return bwrap_argv(spec, seccomp_fd)

    def _kernel_env(self, env: dict) -> dict[str, str]:
        return {**KERNEL_ENV, "MPLCONFIGDIR": str(self.work_dir / ".matplotlib"), **env}

    def _kernel_args(self, connection_file: str) -> list[str]:
        logging = ["--HistoryManager.enabled=False", "--IPKernelApp.log_level=ERROR"]
        return [*self.limits.launcher_args(), "-f", connection_file, *logging]

    def _connect(self, timeout: float = 60.0) -> BlockingKernelClient:
        client = BlockingKernelClient(
            connection_file=str(self.private / "connection.json"), context=_zmq_context()
        )
        client.load_connection_file()
        client.start_channels()
        deadline, sent = time.monotonic() + timeout, set()
        while time.monotonic() < deadline and self.proc.poll() is None:
            sent.add(client.kernel_info())  # requests sent before the kernel bound its sockets may be lost
            try:
                reply = client.get_shell_msg(timeout=1.0)
            except queue.Empty:
                continue
            if reply["parent_header"].get("msg_id") in sent:
                _drain(client)
                return client
        client.stop_channels()
        raise KernelStartError(f"the kernel did not start: {self.stderr_tail() or 'no output'}")

    def stderr_tail(self) -> str:
        return self._tail[-2000:].decode(errors="replace").strip()

    @property
    def processes_capped(self) -> bool:
        """Whether a fork bomb meets a limit: the kernel exempts host root from RLIMIT_NPROC."""
        return not self.jailed or self.cgroup is not None or os.geteuid() != 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def interrupt(self) -> None:
        """Ask the kernel to raise KeyboardInterrupt (a message: bwrap passes no signals on)."""
        msg = self.client.session.msg("interrupt_request", content={})
        self.client.control_channel.send(msg)

    def task_count(self) -> int:
        """Threads of every process in the jail, seen from the host (nothing the kernel reports)."""
        count, stack, seen = 0, [self.proc.pid], set()
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            count += len(tids)
            for tid in tids:
                try:
                    stack += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
                except OSError:
                    pass
        if self.cgroup is not None:
            stack_pids = self.cgroup.pids() - seen
            count += len(stack_pids)  # a process that left the tree (re-parented) still counts
        return count

    def kill(self) -> None:
        """End every process of this kernel and remove its private directory."""
        client = getattr(self, "client", None)
        if client is not None:
            client.stop_channels()
        proc = getattr(self, "proc", None)
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.kill()
            proc.wait()
        if self.cgroup is not None:
            self.cgroup.remove()
        shutil.rmtree(self.private, ignore_errors=True)


class _Spawner:
    """Starts processes from one thread that lives as long as this process. bwrap's
    --die-with-parent (PR_SET_PDEATHSIG) fires when the *thread* that started it ends, and
    tools are called from short-lived worker threads: the kernel would die after each turn."""

    def __init__(self):
        self._jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, daemon=True, name="qthink-kernel-spawner").start()

    def _serve(self) -> None:
        while True:
            start, answer = self._jobs.get()
            try:
                answer.put((True, start()))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                answer.put((False, exc))

    def run(self, start):
        answer: queue.Queue = queue.Queue(maxsize=1)
        self._jobs.put((start, answer))
        ok, value = answer.get()
        if not ok:
            raise value
        return value


@functools.cache
def _spawner() -> _Spawner:
    return _Spawner()


@functools.cache
def _zmq_context() -> zmq.Context:
    """One context for every kernel client (destroying one under a live channel thread is unsafe);
    its sockets refuse oversized messages and buffer only a few."""
    context = zmq.Context()
    context.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    context.setsockopt(zmq.RCVHWM, RECEIVE_BUFFER_MESSAGES)
    context.setsockopt(zmq.LINGER, 0)
    return context


def _cgroup_entry(procs_files: list[str]) -> list[str]:
    """A shell prefix that moves itself into the cgroup, then execs the jail (so nothing starts outside)."""
    script = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
    return ["/bin/sh", "-c", script, "sh", *procs_files, "--"]


def _drain(client: BlockingKernelClient) -> None:
    while True:
        try:
            client.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            return
