"""Run an extracted program against stdin/stdout tests in a subprocess with time and memory limits."""

import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass

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
    """Run one test in a fresh interpreter, in an empty temp folder, with a bare environment."""
    with tempfile.TemporaryDirectory(prefix="qthink-eval-") as folder:
        path = os.path.join(folder, "main.py")
        with open(path, "w") as f:
            f.write(source)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=folder,
            env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
            preexec_fn=_limit(limits),
            start_new_session=True,
            text=True,
        )
        try:
            out, err = proc.communicate(stdin, timeout=limits.seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            return TestResult(False, "timeout")
    if proc.returncode != 0:
        last = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return TestResult(False, f"runtime error: {last}")
    return TestResult(_same_output(out, expected), "ok" if _same_output(out, expected) else "wrong answer")


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
