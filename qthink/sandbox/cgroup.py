"""A cgroup of its own for one jailed kernel: a cap on its tasks and memory, and a way to kill all of it.

Made where this process may write below its own cgroup: cgroup v2 with the `pids` and
`memory` controllers delegated, or the v1 `pids` and `memory` hierarchies (what a
container run as root usually has). Elsewhere there is no cgroup, and the jail relies on
rlimits alone (which do not cap processes for a jail run by root: the kernel exempts it).
"""

import os
import signal
import time
import uuid
from pathlib import Path

_ROOT = Path("/sys/fs/cgroup")


class KernelCgroup:
    """The directories (one per hierarchy) that hold one kernel's processes."""

    def __init__(self, dirs: list[Path], version: int):
        self.dirs, self.version = dirs, version

    @property
    def procs_files(self) -> list[str]:
        """Where the launcher writes its own pid before it starts the jail."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            try:
                found.update(int(line) for line in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return found

    def kill(self) -> None:
        """SIGKILL everything in the cgroup, until it is empty (new forks included)."""
        if self.version == 2 and (self.dirs[0] / "cgroup.kill").exists():
            _write(self.dirs[0] / "cgroup.kill", "1")
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)

    def remove(self) -> None:
        self.kill()
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # the last tasks are still exiting
                    time.sleep(0.02)


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except OSError:
        return False


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per controller (v2's unified one under '')."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def make_cgroup(max_tasks: int, memory_bytes: int) -> KernelCgroup | None:
    """A new cgroup with these caps, or None where this process may not make one."""
    try:
        own = _own_paths()
    except OSError:
        return None
    name = f"qthink-kernel-{uuid.uuid4().hex[:12]}"
    return _make_v2(own, name, max_tasks, memory_bytes) or _make_v1(own, name, max_tasks, memory_bytes)


def _make_v2(own: dict[str, str], name: str, max_tasks: int, memory_bytes: int) -> KernelCgroup | None:
    if "" not in own or not (_ROOT / "cgroup.controllers").exists():
        return None
    parent = _ROOT / own[""].lstrip("/")
    enabled = (parent / "cgroup.subtree_control").read_text().split() if parent.exists() else []
    if not {"pids", "memory"} <= set(enabled):
        return None
    return _make_dirs([(parent / name, {"pids.max": max_tasks, "memory.max": memory_bytes})], 2)


def _make_v1(own: dict[str, str], name: str, max_tasks: int, memory_bytes: int) -> KernelCgroup | None:
    if "pids" not in own or "memory" not in own:
        return None
    pids_dir = _ROOT / "pids" / own["pids"].lstrip("/") / name
    memory_dir = _ROOT / "memory" / own["memory"].lstrip("/") / name
    limits = {"memory.limit_in_bytes": memory_bytes, "memory.memsw.limit_in_bytes": memory_bytes}
    return _make_dirs([(pids_dir, {"pids.max": max_tasks}), (memory_dir, limits)], 1)


def _make_dirs(plan: list[tuple[Path, dict[str, int]]], version: int) -> KernelCgroup | None:
    made: list[Path] = []
    for directory, limits in plan:
        try:
            directory.mkdir()
        except OSError:
            KernelCgroup(made, version).remove()
            return None
        made.append(directory)
        for key, value in limits.items():
            # memsw exists only with swap accounting; every other limit must hold.
            if not _write(directory / key, str(value)) and not key.startswith("memory.memsw"):
                KernelCgroup(made, version).remove()
                return None
    return KernelCgroup(made, version)
