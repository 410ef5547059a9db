"""Set the code interpreter kernel's rlimits, then start the IPython kernel in this same process.

Run inside the jail as a plain script (`python -I kernel_launcher.py ...`): it imports
nothing from qthink, so the working directory (on no import path under `-I`) cannot
replace it. Soft and hard limits are set equal: the code cannot raise them again.
"""

import argparse
import ctypes
import os
import resource
import signal
import sys

LIMITS = {
    "memory_mb": (resource.RLIMIT_AS, 1024 * 1024),
    "file_mb": (resource.RLIMIT_FSIZE, 1024 * 1024),
    "open_files": (resource.RLIMIT_NOFILE, 1),
    "processes": (resource.RLIMIT_NPROC, 1),
}


def set_limits(args: argparse.Namespace) -> None:
    """Apply each limit that is above 0; no core dumps; CPU time with a small hard margin."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for name, (which, unit) in LIMITS.items():
        value = getattr(args, name)
        if value > 0:
            resource.setrlimit(which, (value * unit, value * unit))
    if args.cpu_seconds > 0:
        # The soft limit sends SIGXCPU (the kernel dies and is restarted); the hard one is a backstop.
        resource.setrlimit(resource.RLIMIT_CPU, (args.cpu_seconds, args.cpu_seconds + 5))


def die_with(parent_pid: int) -> None:
    """SIGKILL this kernel when its parent exits (outside a jail nothing else ends it then)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        sys.exit(1)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpu-seconds", type=int, default=0)
    parser.add_argument("--parent-pid", type=int, default=0)
    for name in LIMITS:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=0)
    args, kernel_argv = parser.parse_known_args(argv)
    if args.parent_pid:
        die_with(args.parent_pid)
    set_limits(args)
    from ipykernel.kernelapp import launch_new_instance

    launch_new_instance(argv=kernel_argv)


if __name__ == "__main__":
    main(sys.argv[1:])
