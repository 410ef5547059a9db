"""The code interpreter: a persistent jailed kernel with a timeout, memory and CPU caps, and no network."""

import errno
import re
import resource
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from qthink.agent.code_interpreter import CodeInterpreter
from tests.helpers.scripted_endpoint import ScriptedEndpoint, agent, reply, tool_messages

TIMEOUT = 3


@pytest.fixture(scope="module")
def interpreter(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("ci-work")
    limits = {"timeout": TIMEOUT, "memory_mb": 2048, "cpu_seconds": 300}
    tool = CodeInterpreter({"work_dir": str(work_dir), **limits})
    yield tool
    tool.close()


def run(interpreter, code: str) -> str:
    return interpreter.call({"code": code})


def test_state_persists_and_stdout_and_last_value_come_back(interpreter):
    assert run(interpreter, "x = 20\nprint('hello')\nx + 1") == "hello\n21"
    assert run(interpreter, "x * 2") == "40"
    assert run(interpreter, "import os; os.getcwd()") == repr(str(interpreter.work_dir))


def test_state_persists_across_calls_from_threads_that_have_ended(tmp_path):
    # The assistant calls tools from a pool whose threads end with each turn; the kernel must not.
    tool = CodeInterpreter({"work_dir": str(tmp_path), "timeout": 20})
    try:
        for code, expected in (("carried = 7", "(no output)"), ("carried * 6", "42")):
            with ThreadPoolExecutor(max_workers=1) as pool:  # the first call starts the kernel here
                assert pool.submit(run, tool, code).result() == expected
    finally:
        tool.close()


def test_endless_loop_is_interrupted_at_the_timeout_and_the_kernel_stays_usable(interpreter):
    run(interpreter, "kept = 'still here'")
    started = time.monotonic()
    result = run(interpreter, "print('started', flush=True)\nwhile True:\n    pass")
    elapsed = time.monotonic() - started
    assert result == f"started\nError: the code ran longer than {TIMEOUT} s and was interrupted."
    assert TIMEOUT <= elapsed < TIMEOUT + 5
    assert run(interpreter, "kept") == "'still here'"


def test_allocating_10_gb_fails_inside_the_kernel_only(interpreter):
    host_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run(interpreter, "big = bytearray(10 * 1024**3)")
    assert "MemoryError" in result
    limits = run(
        interpreter, "import resource; resource.getrlimit(resource.RLIMIT_AS), resource.getrlimit(0)"
    )
    assert limits == f"(({2048 << 20}, {2048 << 20}), (300, 305))"
    assert run(interpreter, "len(bytearray(50 * 1024**2))") == str(50 * 1024**2)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - host_peak < 200 * 1024  # KiB


# Native code's connect(2) on a non-blocking socket, below Python's own socket module.
NATIVE_CONNECT = """
import ctypes, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
raw = socket.socket()
raw.setblocking(False)
address = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 80) + socket.inet_aton("1.1.1.1") + bytes(8)
libc.connect(raw.fileno(), address, len(address)), ctypes.get_errno()
"""


def test_network_to_other_hosts_is_unreachable(interpreter):
    refused = run(interpreter, "import socket; socket.create_connection(('10.255.255.1', 80), timeout=5)")
    assert "Network is unreachable" in refused
    udp = run(interpreter, "s = socket.socket(type=socket.SOCK_DGRAM); s.sendto(b'x', ('8.8.8.8', 53))")
    assert "Network is unreachable" in udp
    assert run(interpreter, NATIVE_CONNECT) == f"(-1, {errno.ENETUNREACH})"


def test_loopback_is_the_jails_own(interpreter):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    result = run(interpreter, f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)")
    assert "Connection refused" in result
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()


def test_files_outside_the_working_dir_are_not_there(interpreter, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    assert "FileNotFoundError" in run(interpreter, f"open({str(secret)!r}).read()")
    target = tmp_path / "new.txt"
    result = run(
        interpreter, f"import os; os.makedirs({str(tmp_path)!r}); open({str(target)!r}, 'w').write('x')"
    )
    assert result == "1"  # written into the jail's own /tmp, which the host never sees
    assert not (tmp_path / "new.txt").exists()
    assert run(interpreter, "open('notes.txt', 'w').write('kept'); open('notes.txt').read()") == "'kept'"
    assert (interpreter.work_dir / "notes.txt").read_text() == "kept"


def test_new_processes_start_inside_the_jail(interpreter):
    code = "import subprocess; subprocess.run(['ls', '/proc'], capture_output=True, text=True).stdout.split()"
    pids = [int(name) for name in eval(run(interpreter, code)) if name.isdigit()]
    assert 2 <= len(pids) < 10 and 1 in pids  # the jail's own few processes, never the host's


def test_tracebacks_and_images_come_back(interpreter, monkeypatch):
    monkeypatch.setattr(interpreter, "timeout", 60)  # matplotlib's first import builds a font cache
    error = run(interpreter, "def f():\n    return 1 / 0\nf()")
    assert "ZeroDivisionError" in error and "return 1 / 0" in error
    plot = run(interpreter, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    path = Path(re.search(r"!\[image\]\((.+?\.png)\)", plot).group(1))
    assert path.parent == interpreter.work_dir
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_kernel_that_dies_is_restarted(interpreter):
    run(interpreter, "lost = 1")
    result = run(interpreter, "import os; os._exit(1)")
    assert "restarted" in result
    assert "NameError" in run(interpreter, "lost")
    assert "FileNotFoundError" in run(interpreter, "open('/etc/shadow')")


def test_assistant_uses_the_code_interpreter_by_name(tmp_path):
    calls = [("code_interpreter", {"code": "sum(range(101))"})]
    endpoint = ScriptedEndpoint([reply("compute", "", calls), reply(None, "5050")])
    try:
        cfg = {"name": "code_interpreter", "work_dir": str(tmp_path), "timeout": 20}
        with agent(endpoint, [cfg]) as bot:
            response = bot.run_nonstream([{"role": "user", "content": "sum 0..100"}])
            assert bot.tools["code_interpreter"].work_dir == tmp_path.resolve()
    finally:
        endpoint.close()
    assert tool_messages(response)[0]["content"] == "5050"
    schema = endpoint.requests[0]["tools"][0]["function"]
    assert schema["name"] == "code_interpreter" and schema["parameters"]["required"] == ["code"]


def test_an_unknown_setting_is_an_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="unknown code_interpreter settings: network_namespace"):
        CodeInterpreter({"work_dir": str(tmp_path), "network_namespace": False})
