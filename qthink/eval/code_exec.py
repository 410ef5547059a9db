"""Run an extracted program against stdin/stdout tests in a jailed subprocess with time and memory limits."""

import contextlib
import functools
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qthink.sandbox.jail import BWRAP_ENV, jail_problem, one_shot_jail

_PROGRAM_ENV = {"PYTHONHASHSEED": "0"}
# Functional (LeetCode-style) tests: call `Solution().<fn>(*args)`, one JSON value per input line.
CALL_HARNESS = """
import json, sys
_args = [json.loads(line) for line in sys.stdin.read().splitlines() if line.strip()]
print(json.dumps(getattr(Solution(), {fn!r})(*_args)))
"""


@dataclass(frozen=True)
class Limits:
    seconds: float = 6.0
    memory_mb: int = 1024
    output_mb: int = 16


DEFAULT_LIMITS = Limits()


@dataclass
class TestResult:
    passed: bool
    reason: str  # "ok", "wrong answer", "timeout", "runtime error: ..."


def _limit(limits: Limits):
    def apply() -> None:
        memory = limits.memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = int(limits.seconds) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        output = limits.output_mb << 20
        resource.setrlimit(resource.RLIMIT_FSIZE, (output, output))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _same_output(got: str, expected: str) -> bool:
    """Whitespace-insensitive line comparison, as LiveCodeBench's stdin grader does."""
    lines = lambda s: [line.split() for line in s.strip().splitlines()]
    return lines(got) == lines(expected)


def run_test(source: str, stdin: str, expected: str, limits: Limits = DEFAULT_LIMITS) -> TestResult:
    """Run one test in a fresh interpreter, in an empty temp folder, with a bare environment:
    in the OS jail (no network, nothing writable but that folder) where this machine has one."""
    with tempfile.TemporaryDirectory(prefix="qthink-eval-") as folder:
        path = os.path.join(folder, "main.py")
        with open(path, "w") as f:
            f.write(source)
        with _command(folder, path) as (argv, env, fds):
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=folder,
                env=env,
                pass_fds=fds,
                preexec_fn=_limit(limits),  # inherited through bwrap by the program
                start_new_session=True,
                text=True,
            )
            try:
                out, err = proc.communicate(stdin, timeout=limits.seconds)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)  # bwrap: the jail's PID namespace dies with it
                proc.communicate()
                return TestResult(False, "timeout")
    if proc.returncode != 0:
        last = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return TestResult(False, f"runtime error: {last}")
    return TestResult(_same_output(out, expected), "ok" if _same_output(out, expected) else "wrong answer")


@contextlib.contextmanager
def _command(folder: str, path: str):
    """(argv, environment, fds to pass): jailed where a jail can be made, else a plain child."""
    program = [sys.executable, "-I", "-S", path]
    if jail_problem() is not None:
        _warn_unjailed()
        yield program, {"PATH": "/usr/bin:/bin", **_PROGRAM_ENV}, ()
        return
    with one_shot_jail(Path(folder), env=_PROGRAM_ENV) as (prefix, fds):
        yield prefix + program, BWRAP_ENV, fds


@functools.cache
def _warn_unjailed() -> None:
    print(f"warning: eval runs model-written programs WITHOUT a jail: {jail_problem()}", file=sys.stderr)


def run_tests(
    source: str, tests: list[dict], fn_name: str | None = None, limits: Limits = DEFAULT_LIMITS
) -> TestResult:
    """Every test must pass; the first failure is the verdict."""
    if fn_name:
        source += "\n" + CALL_HARNESS.format(fn=fn_name)
    for test in tests:
        result = run_test(source, test["input"], test["output"], limits)
        if not result.passed:
            return result
    return TestResult(True, "ok")
