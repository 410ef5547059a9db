"""The bubblewrap command line that jails the code interpreter's kernel, and whether this machine can run it.

The jail: new user, mount, PID, IPC, UTS, cgroup and network namespaces (the network one
is kept only when network is allowed), no capabilities, no further user namespaces; a
read-only root made of only what Python needs; the working directory the one writable
path from the host; private size-capped /tmp and /dev/shm; a new /proc and a minimal /dev;
no host sockets; an empty environment plus an allow-list; a seccomp filter
(`seccomp_filter`); SIGKILL when the parent dies; a new terminal session.
"""

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from qthink.sandbox.seccomp_filter import SeccompUnavailable, compile_filter

JAIL_DIR = "/run/qthink"  # the launcher, the connection file and the ZMQ sockets, inside the jail
JAIL_UID = 1000
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What the C library, fonts and TLS read; nothing about the host's users or services.
ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "fonts",
    "ssl/certs",  # never ssl/private: a jail run by root could read the host's TLS keys
    "ssl/openssl.cnf",
    "ca-certificates",
    "mime.types",
    "services",
    "protocols",
)
ETC_NETWORK_FILES = ("resolv.conf", "hosts", "nsswitch.conf", "gai.conf", "host.conf")
# bwrap's own environment: its init process (pid 1 in the jail, readable there) keeps it.
BWRAP_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
)


class SandboxUnavailable(RuntimeError):
    """No jail can be made on this machine, and running unjailed was not asked for."""


@dataclass
class JailSpec:
    """Everything one jail is made of, as host paths and sizes."""

    work_dir: Path
    socket_dir: Path  # bound writable at JAIL_DIR/ipc: the kernel binds its ZMQ sockets there
    private_files: dict[str, Path]  # jail path -> host file, bound read-only
    allow_network: bool = False
    tmp_mb: int = 256
    shm_mb: int = 64
    env: dict[str, str] = field(default_factory=dict)


def python_dirs() -> list[str]:
    """The interpreter and its packages: the venv, its base installation, the real executable's."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    dirs.add(str(Path(os.path.realpath(sys.executable)).parent.parent))
    real = sorted({os.path.realpath(d) for d in dirs} | dirs)
    return [d for d in real if os.path.isdir(d) and d != "/"]


def jail_env(spec: JailSpec) -> dict[str, str]:
    """The jailed command's whole environment: a PATH to Python and the system, and `spec.env`."""
    path = [str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]
    return {"PATH": ":".join(path), **spec.env}


def bwrap_argv(spec: JailSpec, seccomp_fd: int) -> list[str]:
    """The `bwrap ... --` prefix for a command to run in the jail."""
    argv = [bwrap_path() or "bwrap", "--unshare-all", "--unshare-user", "--disable-userns"]
    if spec.allow_network:
        argv.append("--share-net")
    argv += ["--uid", str(JAIL_UID), "--gid", str(JAIL_UID), "--hostname", "sandbox", "--cap-drop", "ALL"]
    argv += ["--die-with-parent", "--new-session", "--clearenv", "--seccomp", str(seccomp_fd)]
    argv += ["--size", str(spec.tmp_mb << 20), "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev"]
    argv += ["--size", str(spec.shm_mb << 20), "--tmpfs", "/dev/shm"]
    argv += _system_binds(spec.allow_network)
    pythons = python_dirs()
    for d in pythons:
        argv += ["--ro-bind", d, d]
    for jail_path, host_path in spec.private_files.items():
        argv += ["--ro-bind", str(host_path), jail_path]
    argv += [
        "--bind",
        str(spec.socket_dir),
        f"{JAIL_DIR}/ipc",
        "--bind",
        str(spec.work_dir),
        str(spec.work_dir),
    ]
    for d in pythons:  # a working dir above the venv must not make the venv writable
        if Path(d).is_relative_to(spec.work_dir):
            argv += ["--ro-bind", d, d]
    for name, value in jail_env(spec).items():
        argv += ["--setenv", name, value]
    # The root itself (a tmpfs holding the mount points) is not a place to write either; nor
    # /proc, whose sysctls (core_pattern: a command the host runs) only check the file owner,
    # and a jail started by root is, on the host, root.
    return [*argv, "--remount-ro", "/", "--remount-ro", "/proc", "--chdir", str(spec.work_dir), "--"]


def _system_binds(allow_network: bool) -> list[str]:
    argv: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):  # merged /usr: /lib -> usr/lib
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    names = ETC_FILES + (ETC_NETWORK_FILES if allow_network else ())
    for name in names:
        path = f"/etc/{name}"
        if os.path.exists(path):
            argv += ["--ro-bind", path, path]
    return argv


def work_dir_problem(work_dir: Path) -> str | None:
    """Why this working dir must not be the jail's one writable path (None when it may be).

    Code in the jail may write anything there, so it must not be where the host looks for
    code or settings: not inside the system or Python's directories, not above a directory
    Python imports from, not the home directory (dotfiles run at login) or one above it.
    """
    real = work_dir.resolve()
    protected = [Path(p) for p in (*SYSTEM_DIRS, "/etc", "/boot", "/proc", "/sys", "/dev", "/run", "/var")]
    protected += [Path(p) for p in python_dirs()]
    for place in protected:
        place = place.resolve()
        if real == place or real.is_relative_to(place):
            return f"the working dir {real} is inside {place}, which code run by the host reads"
    home = Path.home().resolve()
    if real == Path("/") or home == real or home.is_relative_to(real):
        return f"the working dir {real} holds the home directory {home} (its dotfiles run at login)"
    for entry in (Path(p).resolve() for p in sys.path if p and os.path.isdir(p)):
        if entry.is_relative_to(real):
            return f"the working dir {real} holds {entry}, where Python imports code from"
    return None


def identity_files(directory: Path) -> dict[str, Path]:
    """Made-up /etc/passwd and /etc/group naming only the jail's user (some libraries look it up)."""
    passwd, group = directory / "passwd", directory / "group"
    passwd.write_text(f"sandbox:x:{JAIL_UID}:{JAIL_UID}:sandbox:/tmp:/usr/sbin/nologin\n")
    group.write_text(f"sandbox:x:{JAIL_UID}:\n")
    return {"/etc/passwd": passwd, "/etc/group": group}


@functools.cache
def bwrap_path() -> str | None:
    return shutil.which("bwrap")


@functools.cache
def jail_problem() -> str | None:
    """Why no jail can be made here (and what to do), or None when one can."""
    if bwrap_path() is None:
        return f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}"
    try:
        compile_filter()
    except SeccompUnavailable as exc:
        return str(exc)
    probe = run_in_jail(["/bin/true"], timeout=30)
    if probe.returncode != 0:
        detail = probe.stderr.strip().splitlines()[-1:] or [f"exit status {probe.returncode}"]
        return (
            f"bwrap cannot make the jail here ({detail[0]}): unprivileged user namespaces may be off "
            "(sysctl kernel.unprivileged_userns_clone=1, or user.max_user_namespaces > 0; in a container, "
            "allow them or run with --unsafe-code-interpreter)"
        )
    return None


@contextlib.contextmanager
def one_shot_jail(work_dir: Path, allow_network: bool = False, env: dict | None = None):
    """The bwrap prefix for one command jailed to `work_dir`, and the fds to pass to it.

    Run the command with `env=BWRAP_ENV` (bwrap's own, readable in the jail) and
    `pass_fds`; the seccomp program and the made-up /etc files live until the block ends.
    """
    with tempfile.TemporaryDirectory(prefix="qthink-jail-") as tmp:
        sockets = Path(tmp) / "ipc"
        sockets.mkdir()
        spec = JailSpec(
            work_dir, sockets, identity_files(Path(tmp)), allow_network=allow_network, env=env or {}
        )
        with tempfile.TemporaryFile() as bpf:
            bpf.write(compile_filter(deny_unix_sockets=allow_network))
            bpf.seek(0)
            yield bwrap_argv(spec, bpf.fileno()), (bpf.fileno(),)


def run_in_jail(
    command: list[str], timeout: float, allow_network: bool = False
) -> subprocess.CompletedProcess:
    """Run a short command in a throwaway jail (its own temporary working dir), for probes."""
    with tempfile.TemporaryDirectory(prefix="qthink-probe-") as work:
        with one_shot_jail(Path(work), allow_network) as (prefix, fds):
            return subprocess.run(
                prefix + command,
                capture_output=True,
                text=True,
                timeout=timeout,
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                env=BWRAP_ENV,
            )
