"""Thread counts for small decode steps: the native kernels on every thread, torch's ops on one."""

import contextlib
from collections.abc import Iterator

import torch

from qthink.kernels.build import kernel_ops, linear_kernels_available


@contextlib.contextmanager
def torch_ops_on_one_thread(enabled: bool = True) -> Iterator[None]:
    """Inside the block torch's own ops run on the calling thread alone, while the native
    kernels keep torch's thread count. The small ops of a batch-1 decode step (norms, RoPE,
    the sampler's passes over the vocabulary) gain nothing from a second thread, and each
    parallel region waits for every OpenMP thread: on a busy machine, for one the OS has
    descheduled, a whole time slice."""
    threads = torch.get_num_threads()
    if not enabled or threads == 1 or not linear_kernels_available():
        yield
        return
    kernel_ops().set_num_threads(threads)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        kernel_ops().set_num_threads(0)
