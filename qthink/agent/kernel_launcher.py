"""Start an IPython kernel under memory and CPU-time limits (`setrlimit`), for the code interpreter."""

import argparse
import resource
import sys


def set_limits(memory_mb: int, cpu_seconds: int) -> None:
    """Cap the address space and CPU time of this process and its children; 0 leaves a limit off."""
    if memory_mb > 0:
        size = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    if cpu_seconds > 0:
        # The soft limit sends SIGXCPU (the kernel dies and is restarted); the hard one is a backstop.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--memory-mb", type=int, default=0)
    parser.add_argument("--cpu-seconds", type=int, default=0)
    args, kernel_argv = parser.parse_known_args(argv)
    set_limits(args.memory_mb, args.cpu_seconds)
    from ipykernel.kernelapp import launch_new_instance

    launch_new_instance(argv=kernel_argv)


if __name__ == "__main__":
    main(sys.argv[1:])
