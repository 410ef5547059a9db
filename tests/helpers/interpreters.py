"""Jailed code interpreters made for one test and closed after it."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from qthink.agent.code_interpreter import CodeInterpreter


@contextmanager
def interpreters(work: Path, timeout: float) -> Iterator[Callable[..., CodeInterpreter]]:
    """Yields make(**cfg): a new interpreter working in `work`; every one made is closed at the end."""
    tools: list[CodeInterpreter] = []

    def make(**cfg) -> CodeInterpreter:
        work.mkdir(exist_ok=True)
        tools.append(CodeInterpreter({"work_dir": str(work), "timeout": timeout, **cfg}))
        return tools[-1]

    try:
        yield make
    finally:
        for tool in tools:
            tool.close()


def run(tool: CodeInterpreter, code: str) -> str:
    return tool.call({"code": code})
