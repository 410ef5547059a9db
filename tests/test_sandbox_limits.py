"""The jail's limits: fork, memory, file, /dev/shm and output bombs end in an error and a usable kernel."""

import os
import time
from pathlib import Path

import pytest

from tests.helpers.interpreters import interpreters, run

pytestmark = pytest.mark.slow


@pytest.fixture
def fresh(tmp_path):
    with interpreters(tmp_path, timeout=4) as make:
        yield make


def jailed_processes() -> list[int]:
    """Host processes running the jailed kernel's launcher (none must outlive a kill)."""
    found = []
    for name in os.listdir("/proc"):
        try:
            if (
                name.isdigit()
                and b"/run/qthink/kernel_launcher.py" in Path(f"/proc/{name}/cmdline").read_bytes()
            ):
                found.append(int(name))
        except OSError:
            pass
    return found


def test_a_fork_bomb_is_capped_then_killed_with_the_jail(fresh):
    tool = fresh(processes=32)
    before = set(jailed_processes())
    run(tool, "kept = 1")
    if not tool.kernel.processes_capped:
        pytest.skip(
            "run as root where no cgroup can be made: nothing caps processes, a bomb would harm the host"
        )
    one_kernel = len(set(jailed_processes()) - before)  # bwrap, its init in the jail, the kernel
    started = time.monotonic()
    result = run(
        tool, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    )
    assert "restarted clean" in result
    assert time.monotonic() - started < 20
    assert "NameError" in run(tool, "kept")  # a clean kernel
    assert run(tool, "6 * 7") == "42"
    assert len(set(jailed_processes()) - before) == one_kernel  # the bomb's processes are gone


def test_a_memory_bomb_fails_inside(fresh):
    tool = fresh(memory_mb=1024)
    assert "MemoryError" in run(tool, "b = bytearray(4 * 1024**3)")
    result = run(tool, "chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024**2))")
    assert "MemoryError" in result or "restarted" in result
    run(tool, "chunks = None")
    assert run(tool, "len(bytearray(100 * 1024**2))") == str(100 * 1024**2)


def test_a_file_size_bomb_stops_at_the_cap(fresh, tmp_path):
    tool = fresh(file_mb=8)
    result = run(tool, "with open('big.bin', 'wb') as f:\n    f.write(bytes(64 * 1024**2))")
    assert "File too large" in result
    assert (tmp_path / "big.bin").stat().st_size <= 8 << 20
    assert run(tool, "1 + 1") == "2"


@pytest.mark.parametrize("where", ["/dev/shm", "/tmp"])
def test_shm_and_tmp_bombs_hit_their_size(fresh, where):
    tool = fresh(shm_mb=16, tmp_mb=16)
    code = f"with open('{where}/bomb', 'wb') as f:\n    for _ in range(64):\n        f.write(bytes(1024**2))"
    assert "No space left on device" in run(tool, code)
    assert not Path(f"{where}/bomb").exists()  # the host's is untouched
    assert run(tool, "1 + 1") == "2"


def test_threads_left_running_after_a_timeout_end_with_the_kernel(fresh):
    tool = fresh()
    count = "import threading; threading.active_count()"
    baseline = run(tool, count)
    code = "import threading, time\nthreading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
    result = run(tool, code + "time.sleep(60)")
    assert "interrupted" in result and "kept threads or processes running" in result and "restarted" in result
    assert run(tool, count) == baseline


def test_a_message_over_the_size_cap_is_dropped_and_the_kernel_restarted(fresh):
    tool = fresh(memory_mb=2048)
    result = run(
        tool, "from IPython.display import display\ndisplay({'text/plain': 'z' * (40 * 1024**2)}, raw=True)"
    )
    assert "z" * 1000 not in result
    assert run(tool, "1 + 1") == "2"
