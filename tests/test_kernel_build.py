"""The native kernels build once per source and compiler, whatever the install path, and a
server builds (or loads) them at start-up, before it reports ready."""

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from qthink.kernels import build, linear_kernels_available
from tests.helpers.server import free_port

REPO = Path(__file__).resolve().parents[1]
needs_kernels = pytest.mark.skipif(
    not linear_kernels_available(), reason="no AVX-512 BF16 kernels on this CPU"
)

PROBE = textwrap.dedent(
    """
    import logging
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from qthink.kernels import build
    print("available", build.linear_kernels_available())
    print("key", build.build_key(build.cpu_flags()))
    print("source", build.KERNEL_DIR)
    """
)


def probe(install: Path) -> dict[str, str]:
    """Run the probe with `install` first on the path; its printed values and its log."""
    env = {**os.environ, "PYTHONPATH": str(install)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=install, timeout=600
    )
    assert result.returncode == 0, result.stderr
    values = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    return {**values, "log": result.stderr}


def copy_package(destination: Path) -> Path:
    shutil.copytree(REPO / "qthink", destination / "qthink", ignore=shutil.ignore_patterns("__pycache__"))
    return destination


@needs_kernels
def test_two_installs_of_one_source_share_one_build(tmp_path):
    """Two copies of the package at different paths hash to the key this process built under,
    and load that build: neither compiles again."""
    ours = build.build_key(build.cpu_flags())
    for name in ("first", "second"):
        result = probe(copy_package(tmp_path / name))
        assert result["source"].startswith(str(tmp_path / name))  # really the copy
        assert result["available"] == "True"
        assert result["key"] == ours
        assert "building CPU kernels" not in result["log"]
        assert f"CPU kernels ready: {build.cache_dir() / ours}" in result["log"]


@needs_kernels
def test_qthink_amx_0_switches_the_tiles_off():
    """QTHINK_AMX=0 leaves the AVX-512 kernels alone (as on a CPU without AMX); unset, the
    tiles are used wherever the CPU and the OS grant them."""
    from qthink.kernels import kernel_ops

    has_tiles = kernel_ops().amx_in_use()
    code = "from qthink.kernels import build; build.linear_kernels_available(); "
    code += "print(build.kernel_ops().amx_in_use())"
    for setting, expected in (("0", False), ("1", has_tiles)):
        env = {**os.environ, "QTHINK_AMX": setting}
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[-1] == str(expected)


def test_key_follows_source_flags_and_compiler(monkeypatch):
    flags = build.cpu_flags()
    key = build.build_key(flags)
    monkeypatch.setattr(build, "compiler_version", lambda: "another compiler 1.0")
    assert build.build_key(flags) != key
    monkeypatch.undo()
    monkeypatch.setattr(build, "COMPILE_FLAGS", [*build.COMPILE_FLAGS, "-DSOMETHING"])
    assert build.build_key(flags) != key


@needs_kernels
def test_serve_loads_kernels_before_it_is_ready(tiny_model_dir):
    """The log says the kernels are ready before the server says it serves, and /health
    answers only after that."""
    port = free_port()
    command = [sys.executable, "-m", "qthink", "serve", str(tiny_model_dir), "--port", str(port)]
    command += ["--dtype", "bfloat16", "--max-model-len", "256", "--kv-cache-memory", str(8 << 20)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "qthink serving" in line:
                break
        log = "".join(lines)
        assert "CPU kernels ready" in log, log
        assert log.index("CPU kernels ready") < log.index("qthink serving")
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None
            time.sleep(0.2)
        else:
            pytest.fail("server did not become healthy")
    finally:
        proc.kill()
        proc.wait()
