"""Tensor-parallel process group: rank 0 runs the engine and hosts the rendezvous, ranks
1..N-1 (qthink.engine.tp_worker) join it and mirror rank 0's model steps."""

import logging
from datetime import timedelta
from typing import cast

import torch
import torch.distributed as dist

from qthink.model.parallel import TensorParallel

log = logging.getLogger("qthink")

# A rank waits for rank 0's next step as long as the server idles; a rank that dies is noticed
# by its peers' sockets closing and by rank 0's supervisor, never by a timeout.
NO_TIMEOUT = timedelta(days=365)


def rendezvous_store() -> dist.TCPStore:
    """Rank 0's store, on a port the system picks (`.port`), for the ranks to meet at."""
    return dist.TCPStore("127.0.0.1", 0, None, True, timeout=NO_TIMEOUT, wait_for_workers=False)


def join_store(port: int) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", port, None, False, timeout=NO_TIMEOUT)


def rank_device(device: torch.device, rank: int) -> torch.device:
    return torch.device("cuda", rank) if device.type == "cuda" else device


def init_group(rank: int, size: int, store: dist.Store, device: torch.device) -> TensorParallel:
    if dist.is_initialized():
        raise RuntimeError("a tensor-parallel engine already runs in this process")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = NO_TIMEOUT if rank else None  # rank 0's waits are the ranks' compute: the default
    try:
        dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
    except BaseException:
        forget_failed_group()
        raise
    return TensorParallel(rank, size)


def forget_failed_group() -> None:
    """torch numbers default groups and counts one whose start failed, so the next engine in this
    process would wait under a name its fresh ranks never use; count it back, as destroying the
    default group does."""
    if not dist.is_initialized():
        dist.distributed_c10d._world.group_count = 0


def handshake(num_blocks: int | None, model: torch.nn.Module) -> int:
    """Rank 0 announces the KV block count; every rank reports the weights it holds and its
    CPU thread count, which rank 0 logs (a rank with fewer threads would slow every step)."""
    box = [num_blocks]
    dist.broadcast_object_list(box, src=0)
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    reports = [None] * dist.get_world_size()
    dist.all_gather_object(reports, (held, torch.get_num_threads()))
    if dist.get_rank() == 0:
        ranks = "; ".join(
            f"rank {r}: {held / 2**20:.2f} MiB of weights, {threads} threads"
            for r, (held, threads) in enumerate(cast(list[tuple[int, int]], reports))  # every rank reported
        )
        log.info("tensor parallel: %s", ranks)
    return cast(int, box[0])  # rank 0 always announces a count
