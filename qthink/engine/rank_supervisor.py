"""Rank 0's watch over ranks 1..N-1: each runs as `python -m qthink.engine.tp_worker`, reports its
error through a pipe before it ends, and its end makes rank 0's pending wait fail at once."""

import logging
import os
import pickle
import signal
import site
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch.distributed as dist

log = logging.getLogger("qthink")

WORKER_MODULE = "qthink.engine.tp_worker"
POLL_S = 0.02  # how often a start-up wait looks at the ranks
DEATH_GRACE_S = 2.0  # a collective that fails may see the socket close before the rank's exit is seen


class RankDiedError(RuntimeError):
    """A tensor-parallel rank ended; the engine cannot run without it."""

    def __init__(self, rank: int, returncode: int, report: str, starting: bool):
        self.rank, self.returncode, self.report = rank, returncode, report.strip()
        when = "while starting" if starting else "while serving"
        text = f"tensor-parallel rank {rank} {exit_status(returncode)} {when}"
        super().__init__(f"{text}:\n{self.report}" if self.report else text)


def exit_status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


@dataclass
class RankProcess:
    rank: int
    process: subprocess.Popen
    watcher: threading.Thread | None = None


@dataclass
class Ranks:
    """Started by `start`; `check` raises the first rank's death, `watching` turns a failed wait
    into it, `stop` ends every rank however things stand."""

    processes: list[RankProcess] = field(default_factory=list)
    on_death: list[Callable[[], None]] = field(default_factory=list)  # called from a watcher thread
    failure: RankDiedError | None = None
    running: bool = False  # start-up (loading, handshake) is over
    rendezvous: dist.Store | None = None
    _died: threading.Event = field(default_factory=threading.Event)
    _stopping: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(cls, size: int, worker_args: tuple) -> "Ranks":
        """Start ranks 1..size-1; each gets `(rank, *worker_args)` pickled on its standard input,
        which stays open: a rank whose parent is gone sees it close and exits."""
        ranks = cls()
        for rank in range(1, size):
            ranks.spawn(rank, pickle.dumps((rank, *worker_args)))
        return ranks

    def spawn(self, rank: int, payload: bytes) -> None:
        """One rank from its pickled arguments, and the thread that waits for its end."""
        read_end, write_end = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-P", "-m", WORKER_MODULE, str(write_end)],
                stdin=subprocess.PIPE,
                pass_fds=(write_end,),
                env=worker_environment(),
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        child = RankProcess(rank, process)
        child.watcher = threading.Thread(
            target=self._watch, args=(child, read_end), name=f"qthink-tp{rank}-watch", daemon=True
        )
        child.watcher.start()
        self.processes.append(child)
        try:
            assert process.stdin is not None  # stdin=PIPE
            process.stdin.write(payload)
            process.stdin.flush()
        except BrokenPipeError:  # it ended already; its watcher says why
            pass

    def _watch(self, child: RankProcess, read_end: int) -> None:
        with os.fdopen(read_end, encoding="utf-8", errors="replace") as report:
            text = report.read()  # until the rank's end of the pipe closes: it has ended
        returncode = child.process.wait()
        if self._stopping.is_set():
            return
        if self.failure is None:
            self.failure = RankDiedError(child.rank, returncode, text, starting=not self.running)
            log.error("%s", self.failure)
        self._died.set()
        for callback in self.on_death:
            callback()

    def check(self) -> None:
        """Raise the first rank's death, if one has ended."""
        if self.failure is not None:
            raise self.failure

    def explain(self, error: Exception) -> None:
        """After a wait on the ranks failed with `error`: if a rank has ended (or ends within a
        moment: the socket may close before the exit is seen), stop the rest and raise that
        rank's own error."""
        if self._died.wait(DEATH_GRACE_S):
            self.stop()  # the group is broken: tear it down now, not at exit
            raise cast(RankDiedError, self.failure) from error  # set before _died

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Run what waits on the ranks; if it fails because one ended, raise that rank's error."""
        self.check()
        try:
            yield
        except Exception as error:
            self.explain(error)
            raise

    def store(self, inner: dist.Store) -> dist.Store:
        """Rank 0's rendezvous store, whose waits end as soon as a rank has ended. Kept here until
        `stop`: the ranks may still be reading it after rank 0's group is up."""
        self.rendezvous = WatchedStore(inner, self.check)
        return self.rendezvous

    def stop(self) -> None:
        """Tell running ranks to finish, tear down this process's group, and make sure every rank
        process has ended (killed after 10 s)."""
        self._stopping.set()
        if dist.is_initialized():
            if self.failure is None:
                try:
                    dist.broadcast_object_list([None], src=0)
                except RuntimeError:
                    pass
            dist.destroy_process_group()  # also after a failed collective: no abort at exit
        for child in self.processes:
            _end(child.process)
        for child in self.processes:
            if child.watcher is not None:
                child.watcher.join(timeout=5)
        self.rendezvous = None


def _end(process: subprocess.Popen) -> None:
    if process.stdin is not None:
        try:
            process.stdin.close()  # a rank that is still starting exits on this
        except BrokenPipeError:
            pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def worker_environment() -> dict[str, str]:
    """The environment of a rank: this one, plus the folder this qthink was imported from when
    that is not where the interpreter finds its packages anyway (a source checkout)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    installed = {str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if root not in installed:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


class WatchedStore(dist.Store):
    """A rendezvous store whose blocking reads poll, so rank 0's `init_process_group` ends with
    the rank's error when one dies before joining, instead of waiting out the store timeout."""

    def __init__(self, inner: dist.Store, raise_if_dead: Callable[[], None]):
        super().__init__()
        self.inner, self.raise_if_dead = inner, raise_if_dead

    def _wait_for(self, keys: list[str]) -> None:
        while not self.inner.check(keys):
            self.raise_if_dead()
            time.sleep(POLL_S)

    def set(self, key, value):
        self.inner.set(key, value)

    def get(self, key):
        self._wait_for([key])
        return self.inner.get(key)

    def wait(self, keys, timeout=None):
        self._wait_for(list(keys))

    def multi_get(self, keys):
        self._wait_for(list(keys))
        return self.inner.multi_get(keys)

    def multi_set(self, keys, values):
        self.inner.multi_set(keys, values)

    def add(self, key, amount):
        return self.inner.add(key, amount)

    def check(self, keys):
        return self.inner.check(keys)

    def compare_set(self, key, expected, desired):
        return self.inner.compare_set(key, expected, desired)

    def delete_key(self, key):
        return self.inner.delete_key(key)

    def num_keys(self):
        return self.inner.num_keys()

    def set_timeout(self, timeout):
        self.inner.set_timeout(timeout)
