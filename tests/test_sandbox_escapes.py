"""Escapes tried on the code interpreter's jail, each in a fresh kernel, checking the harm did not happen."""

import os
import platform
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import pytest

from qthink.agent.code_interpreter import CodeInterpreter
from qthink.sandbox.seccomp_filter import DENIED, MODE_ARGUMENT, NOT_IMPLEMENTED, _libseccomp
from tests.helpers.interpreters import interpreters, run


@pytest.fixture
def fresh(tmp_path):
    """A new jailed kernel with its own working dir (tmp_path/work); the rest of tmp_path is 'the host'."""
    with interpreters(tmp_path / "work", timeout=10) as make:
        yield make


def test_no_write_into_the_virtualenv_or_the_hosts_tmp(fresh, tmp_path):
    tool = fresh()
    pth = Path(sysconfig.get_paths()["purelib"]) / f"qthink_escape_{uuid.uuid4().hex}.pth"
    code = f"import os; os.open({str(pth)!r}, os.O_CREAT | os.O_WRONLY, 0o644)"
    assert "Read-only file system" in run(tool, code)
    assert not pth.exists()
    host_tmp = Path("/tmp") / f"qthink-escape-{uuid.uuid4().hex}"
    assert run(tool, f"open({str(host_tmp)!r}, 'w').write('x')") == "1"  # the jail's own /tmp
    assert not host_tmp.exists()
    outside = tmp_path / "outside.txt"  # its directory is in the jail's /tmp, on the way to the working dir
    run(tool, f"open({str(outside)!r}, 'w').write('x')")
    assert not outside.exists()
    assert "Read-only file system" in run(tool, f"open({str(Path.home() / 'planted.txt')!r}, 'w')")
    assert not (Path.home() / "planted.txt").exists()


def test_gc_finds_no_policy_to_switch_off(fresh, tmp_path):
    tool = fresh()
    code = (
        "import gc\n"
        "hooks = [o for o in gc.get_objects() if type(o).__name__ in ('_Policy', 'Policy')]\n"
        "for o in hooks:\n    o.__dict__.clear()\n"
        f"open({str(tmp_path / 'planted.txt')!r}, 'w')"
    )
    run(tool, code)
    assert not (tmp_path / "planted.txt").exists()


# _posixsubprocess.fork_exec directly (3.11's argument list), which raises no audit event.
FORK_EXEC = """
import _posixsubprocess, os
args = [b'/bin/sh', b'-c', SCRIPT.encode()]
r, w = os.pipe()
pid = _posixsubprocess.fork_exec(args, [args[0]], True, (w,), None, None, -1, -1, -1, -1, -1, -1, r, w,
                                 True, False, -1, None, None, None, -1, None, False)
os.waitpid(pid, 0)[1]
"""
STARTERS = {
    "posixsubprocess": FORK_EXEC,
    "ctypes-system": "import ctypes; ctypes.CDLL(None).system(SCRIPT.encode())",
    "subprocess": "import subprocess; subprocess.run(['/bin/sh', '-c', SCRIPT]).returncode",
    "os-system": "import os; os.system(SCRIPT)",
}


@pytest.mark.parametrize("how", sorted(STARTERS))
def test_processes_started_from_the_kernel_stay_in_the_jail(fresh, tmp_path, how):
    tool = fresh()
    marker = tmp_path / "from-a-child.txt"
    script = f"touch {marker}; echo started > started.txt; cat /proc/1/cmdline > init.txt"
    result = run(tool, f"SCRIPT = {script!r}\n" + STARTERS[how])
    assert "Traceback" not in result, result
    work = tmp_path / "work"
    assert (work / "started.txt").read_text() == "started\n"  # it ran, inside
    assert b"bwrap" in (work / "init.txt").read_bytes().split(b"\0")[0]  # under the jail's own init
    assert not marker.exists()


def test_links_and_renames_do_not_reach_out(fresh, tmp_path):
    tool = fresh()
    outside = tmp_path / "outside.txt"
    outside.write_text("host data")
    python_file = os.path.realpath(sys.executable)
    assert "Invalid cross-device link" in run(tool, f"import os; os.link({python_file!r}, 'hard')")
    assert "PermissionError" in run(tool, f"import os; os.symlink({str(outside)!r}, 'soft')")
    assert "PermissionError" in run(tool, "import os; os.symlink('/', 'root-link')")
    run(tool, "open('mine.txt', 'w').write('x')")
    result = run(tool, f"import os; os.rename('mine.txt', {str(tmp_path / 'moved.txt')!r})")
    assert "No such file or directory" in result or "Invalid cross-device link" in result
    work = tmp_path / "work"
    assert sorted(p.name for p in work.iterdir() if not p.name.startswith(".")) == ["mine.txt"]
    assert outside.read_text() == "host data" and not (tmp_path / "moved.txt").exists()


def test_killing_the_parent_or_everything_leaves_the_host_alive(fresh):
    tool = fresh()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        assert run(tool, "import os; os.kill(os.getppid(), 9); os.getppid()") == "1"
        result = run(tool, f"import os; os.kill({bystander.pid}, 9)")
        assert "ProcessLookupError" in result or result == "(no output)"
        run(tool, "import os, subprocess; child = subprocess.Popen(['sleep', '30']); os.kill(-1, 9)")
        assert bystander.poll() is None
        assert run(tool, "6 * 7") == "42"
    finally:
        bystander.kill()
        bystander.wait()


PNG = (
    "import base64\nfrom IPython.display import Image, display\n"
    "display(Image(data=base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==')))"
)


def test_an_image_name_planted_as_a_symlink_is_not_written_through(fresh, tmp_path):
    tool = fresh()
    target = tmp_path / "victim.txt"
    target.write_text("unchanged")
    work = tmp_path / "work"
    (work / "image_1.png").symlink_to(target)  # as if the jail could leave one
    result = run(tool, PNG)
    assert target.read_text() == "unchanged"
    saved = Path(result.removeprefix("![image](").removesuffix(")"))
    assert saved.parent == work and saved.name != "image_1.png" and not saved.is_symlink()
    assert saved.read_bytes()[:4] == b"\x89PNG"


def test_planted_modules_in_the_working_dir_do_not_unjail_the_restarted_kernel(fresh, tmp_path):
    tool = fresh()
    marker = tmp_path / "planted-ran.txt"
    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    plant = (
        "import os\n"
        "for path in ['qthink/agent/kernel_launcher.py', 'qthink/__init__.py', 'qthink/agent/__init__.py',"
        " 'ipykernel/__init__.py', 'sitecustomize.py', 'usercustomize.py', 'argparse.py', 'resource.py']:\n"
        "    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)\n"
        f"    open(path, 'w').write({payload!r})\n"
        "os._exit(1)"
    )
    assert "restarted" in run(tool, plant)
    status = run(tool, "open('/proc/self/status').read().split('Seccomp:')[1].split()[0]")
    assert status == "'2'"
    assert "RLIMIT" not in run(tool, "import resource; resource.getrlimit(resource.RLIMIT_FSIZE)")
    assert not marker.exists()


def test_the_parents_environment_is_not_visible(fresh, monkeypatch):
    monkeypatch.setenv("QTHINK_TEST_SECRET", "hunter2")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    tool = fresh()
    env = run(tool, "import os; sorted(os.environ)")
    assert "QTHINK_TEST_SECRET" not in env and "OPENAI_API_KEY" not in env and "PYTHONPATH" not in env
    for pid in eval(run(tool, "import os; [int(p) for p in os.listdir('/proc') if p.isdigit()]")):
        assert "hunter2" not in run(tool, f"open('/proc/{pid}/environ', 'rb').read()")


def test_host_unix_sockets_cannot_be_reached(fresh, tmp_path):
    tool = fresh()
    path = tmp_path / "host.sock"
    named = socket.socket(socket.AF_UNIX)
    named.bind(str(path))
    named.listen()
    named.settimeout(0.5)
    abstract_name = f"\0qthink-test-{uuid.uuid4().hex}"
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(abstract_name)
    abstract.listen()
    abstract.settimeout(0.5)
    try:
        code = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(path)!r})"
        assert "FileNotFoundError" in run(tool, code)
        code = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({abstract_name!r})"
        assert "ConnectionRefusedError" in run(tool, code)
        for server in (named, abstract):
            with pytest.raises(TimeoutError):
                server.accept()
        assert "FileNotFoundError" in run(tool, "import os; os.listdir('/run/dbus')")
    finally:
        named.close()
        abstract.close()


def test_network_only_when_allowed_and_then_still_no_files(fresh, tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]
    connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5).close(); 'ok'"
    try:
        assert "Connection refused" in run(fresh(), connect)
        allowed = fresh(allow_network=True)
        assert run(allowed, connect) == "'ok'"
        listener.accept()[0].close()
        run(allowed, f"open({str(tmp_path / 'x')!r}, 'w')")
        assert not (tmp_path / "x").exists()
        assert "PermissionError" in run(allowed, "import os; os.symlink('/', 'r')")
    finally:
        listener.close()


def test_host_processes_and_home_are_not_visible(fresh):
    tool = fresh()
    assert "FileNotFoundError" in run(tool, f"open('/proc/{os.getpid()}/environ').read()")
    pids = run(tool, "import os; sorted(int(p) for p in os.listdir('/proc') if p.isdigit())")
    assert len(eval(pids)) < 10
    assert "FileNotFoundError" in run(tool, "open('/etc/shadow').read()")
    assert run(tool, "open('/etc/passwd').read().count(chr(10))") == "1"
    assert "FileNotFoundError" in run(tool, "import os; os.listdir(os.path.expanduser('~root/.ssh'))")
    home = run(tool, "import os; sorted(os.listdir('/root')) if os.path.isdir('/root') else []")
    assert eval(home) in ([], [".pyenv"])  # only the way to a Python installed under /root
    assert run(tool, "import os; os.path.expanduser('~')") == "'/tmp'"


PTRACE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace(16, 1, None, None), ctypes.get_errno()  # PTRACE_ATTACH to the jail's init
"""


def test_kernel_facilities_are_denied(fresh):
    tool = fresh()
    assert run(tool, PTRACE) == "(-1, 1)"  # EPERM
    libc = "import ctypes; libc = ctypes.CDLL(None, use_errno=True)\n"
    unshare = libc + "libc.unshare(0x10000000), ctypes.get_errno()"
    assert run(tool, unshare) == "(-1, 1)"
    mount = (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None), ctypes.get_errno()"
    )
    assert run(tool, mount) == "(-1, 1)"
    caps = run(tool, "open('/proc/self/status').read().split('CapEff:')[1].split()[0]")
    assert caps == "'0000000000000000'"
    assert "Read-only file system" in run(tool, "open('/usr/qthink-escape', 'w')")


def test_output_is_capped_with_a_notice(fresh):
    tool = fresh(max_output_chars=1000)
    result = run(tool, "for i in range(100):\n    print('y' * 1000)")
    assert len(result) < 1200 and "[output truncated: 99" in result
    assert run(tool, "1 + 1") == "2"


def kernels_working_in(folder: Path, wait: float) -> list[int]:
    """Pids of processes whose working directory is `folder`, once none is left or `wait` runs out."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{pid}/cwd") == str(folder):
                    found.append(int(pid))
            except OSError:
                pass
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_the_refusal_without_a_jail_and_the_explicit_unsafe_mode(tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no bwrap on it
    code = "from qthink.agent.code_interpreter import CodeInterpreter; CodeInterpreter({'work_dir': %r})"
    refused = subprocess.run(
        [sys.executable, "-c", code % str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert refused.returncode != 0
    assert (
        "bubblewrap (bwrap) is not installed" in refused.stderr
        and "apt-get install bubblewrap" in refused.stderr
    )
    unsafe = code.replace("})", ", 'allow_unsafe': True}).call({'code': 'print(6 * 7)'})")
    unsafe = "print(" + unsafe.split("; ", 1)[1] + ")"
    unsafe = "from qthink.agent.code_interpreter import CodeInterpreter; " + unsafe
    done = subprocess.run(
        [sys.executable, "-c", unsafe % str(tmp_path)], env=env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42" and "WITHOUT a jail" in done.stderr
    assert not kernels_working_in(tmp_path, wait=10), "the unjailed kernel outlived its parent"
    check = subprocess.run(
        [sys.executable, "-m", "qthink", "agent", "--check-sandbox"], env=env, capture_output=True, text=True
    )
    assert check.returncode == 1 and "refuses to start" in check.stdout


def test_check_sandbox_reports_each_part():
    done = subprocess.run(
        [sys.executable, "-m", "qthink", "agent", "--check-sandbox"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for part in ("user", "mnt", "pid", "ipc", "uts", "net"):
        assert f"{part} namespace: yes" in done.stdout
    assert "seccomp filter: yes" in done.stdout and "verdict: the code interpreter runs jailed" in done.stdout
    assert "read-only root: yes" in done.stdout and "read-only /proc: yes" in done.stdout


def test_no_setuid_files_or_fifos_are_left_for_the_host(fresh, tmp_path):
    tool = fresh()
    work = tmp_path / "work"
    assert "PermissionError" in run(tool, "import os; os.open('suid', os.O_CREAT | os.O_WRONLY, 0o4755)")
    run(tool, "open('plain', 'w').write('x')")
    assert "PermissionError" in run(tool, "import os; os.chmod('plain', 0o4755)")
    assert "PermissionError" in run(tool, "import os; os.chmod('plain', 0o2755)")
    assert "PermissionError" in run(tool, "import os; os.mkfifo('fifo')")
    assert (
        run(tool, "import os; os.chmod('plain', 0o755); oct(os.stat('plain').st_mode & 0o7777)") == "'0o755'"
    )
    assert not (work / "suid").exists() and not (work / "fifo").exists()
    assert (work / "plain").stat().st_mode & 0o6000 == 0


def test_with_network_allowed_the_hosts_abstract_sockets_stay_out_of_reach(fresh):
    name = f"\0qthink-test-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX)
    server.bind(name)
    server.listen()
    server.settimeout(0.5)
    try:
        tool = fresh(allow_network=True)
        code = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({name!r})"
        assert "PermissionError" in run(tool, code)
        with pytest.raises(TimeoutError):
            server.accept()
        assert run(tool, "import socket; len(socket.socketpair())") == "2"
    finally:
        server.close()


def test_a_malformed_message_from_the_kernel_restarts_it(fresh):
    tool = fresh()
    run(tool, "kept = 1")
    forge = """
k = get_ipython().kernel
header = k.session.pack(k.session.msg_header("stream"))
parts = [header, k.session.pack(k.get_parent()["header"]), b"{}", b"[1, 2]"]
k.iopub_socket.send_multipart([b"stream", b"<IDS|MSG>", k.session.sign(parts), *parts])
import time; time.sleep(1)
"""
    assert "malformed message" in run(tool, forge)
    assert "NameError" in run(tool, "kept")


def test_working_dirs_the_host_reads_code_from_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="home directory"):
        CodeInterpreter({"work_dir": str(Path.home())})
    with pytest.raises(ValueError, match="which code run by the host reads"):
        CodeInterpreter({"work_dir": sysconfig.get_paths()["purelib"]})
    monkeypatch.syspath_prepend(str(tmp_path / "project" / "src"))
    (tmp_path / "project" / "src").mkdir(parents=True)
    with pytest.raises(ValueError, match="where Python imports code from"):
        CodeInterpreter({"work_dir": str(tmp_path / "project")})


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x32 system call numbers exist on x86_64 only")
def test_a_call_through_the_x32_abi_ends_the_kernel_instead_of_passing_the_filter(fresh):
    tool = fresh()
    x32_unshare = "import ctypes; ctypes.CDLL(None).syscall(0x40000000 | 272, 0x10000000)"
    started = time.monotonic()
    assert "the kernel died" in run(tool, x32_unshare)
    assert time.monotonic() - started < 8  # the whole process, not one thread: no wait for a timeout
    assert run(tool, "1 + 1") == "2"


def test_every_call_the_filter_names_exists_here():
    lib = _libseccomp()
    names = (*DENIED, *NOT_IMPLEMENTED, *MODE_ARGUMENT, "clone", "ioctl", "socket")
    unknown = [n for n in names if lib.seccomp_syscall_resolve_name(n.encode()) < 0]
    port_io = {"iopl", "ioperm"} if platform.machine() != "x86_64" else set()  # x86 only
    assert set(unknown) <= port_io, unknown


def test_the_agent_cli_refuses_without_a_jail_before_asking_the_model():
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    command = [sys.executable, "-m", "qthink", "agent", "--model-server", "http://127.0.0.1:9/v1"]
    done = subprocess.run(
        [*command, "--code-interpreter", "-p", "hi"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--unsafe-code-interpreter" in done.stderr and "apt-get install bubblewrap" in done.stderr


# Every file under /proc that opens for writing (nothing is written). Sysctls check only the
# owner, and a jail started by root is root on the host: core_pattern would run a command there.
PROC_WRITABLE = """
import os
found = []
for root, dirs, files in os.walk('/proc'):
    dirs[:] = [d for d in dirs if d != 'fd']  # the jail's own open files, reopened
    for name in files:
        try:
            os.close(os.open(os.path.join(root, name), os.O_WRONLY | os.O_NONBLOCK))
            found.append(os.path.join(root, name))
        except OSError:
            pass
found
"""


def test_nothing_under_proc_is_writable_and_no_host_keys_are_readable(fresh):
    tool = fresh()
    assert run(tool, PROC_WRITABLE) == "[]"
    assert "Read-only file system" in run(tool, "open('/proc/sys/kernel/core_pattern', 'w')")
    assert "FileNotFoundError" in run(tool, "import os; os.listdir('/etc/ssl/private')")
    assert run(tool, "import os; os.path.isdir('/etc/ssl/certs')") == "True"
