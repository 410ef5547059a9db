"""Audit hooks for the code interpreter's kernel: no network, no files outside its dir, no new processes.

Limits, stated plainly: audit hooks guard Python code. Native code (a C extension,
ctypes) can go around them, so this is a seat belt against a model's mistakes, not a
wall against a determined attacker; run the interpreter in a container or VM for that.
Memory and CPU time are capped by the kernel launcher with `setrlimit`, which native
code cannot escape.
"""

import ipaddress
import os
import sys
import sysconfig

_NETWORK_EVENTS = {"socket.connect", "socket.sendto", "socket.bind"}
_PROCESS_EVENTS = {
    "subprocess.Popen",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "pty.spawn",
}
_DEVICES = ("/dev/null", "/dev/urandom", "/dev/random", "/dev/shm", "/proc/self", f"/proc/{os.getpid()}")


def install(workdir: str, allow_network: bool = False, allow_outside_files: bool = False) -> None:
    """Install the hooks for this process; audit hooks cannot be removed once added."""
    policy = _Policy(os.path.realpath(workdir), allow_network, allow_outside_files)
    sys.addaudithook(policy.check)


class _Policy:
    def __init__(self, workdir: str, allow_network: bool, allow_outside_files: bool):
        self.allow_network, self.allow_outside_files = allow_network, allow_outside_files
        self.read_roots = tuple({workdir, *_python_roots(), *_DEVICES, "/usr/share/fonts", "/etc/fonts"})
        self.write_roots = (workdir, "/dev/null", "/dev/shm")

    def check(self, event: str, args: tuple) -> None:
        if event in _NETWORK_EVENTS and not self.allow_network:
            _check_address(args[1] if len(args) > 1 else None, event)
        elif event in _PROCESS_EVENTS and not self.allow_network:
            # A child process would run without these hooks.
            raise PermissionError(f"starting processes is disabled in this sandbox ({event})")
        elif event == "open" and not self.allow_outside_files:
            self._check_open(args)

    def _check_open(self, args: tuple) -> None:
        path, mode = args[0], args[1] if len(args) > 1 else "r"
        if isinstance(path, int) or path is None:
            return
        real = os.path.realpath(os.fsdecode(path))
        writing = isinstance(mode, str) and any(c in mode for c in "wax+")
        writing = writing or (isinstance(mode, int) and mode & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        roots = self.write_roots if writing else self.read_roots
        if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots):
            raise PermissionError(f"access outside the working directory is refused: {real}")


def _check_address(address, event: str) -> None:
    if not isinstance(address, tuple) or not address:
        return  # AF_UNIX paths and the like
    host = str(address[0])
    if host in ("", "localhost"):
        return
    try:
        if ipaddress.ip_address(host.split("%")[0]).is_loopback:
            return
    except ValueError:
        pass
    raise PermissionError(f"network access is disabled in this sandbox ({event} to {host})")


def _python_roots() -> set[str]:
    """Where Python and its packages live: imports must keep working."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sysconfig.get_paths().values()}
    roots.update(p for p in sys.path if p and os.path.isabs(p))
    return {os.path.realpath(r) for r in roots if r}
