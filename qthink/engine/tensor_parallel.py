"""Tensor-parallel ranks: rank 0 runs the engine, ranks 1..N-1 mirror its model steps."""

import logging
import multiprocessing as mp
import socket
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import cast

import torch
import torch.distributed as dist

from qthink.config import EngineConfig, ModelConfig
from qthink.loader import load_model
from qthink.model.parallel import TensorParallel

log = logging.getLogger("qthink")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_device(device: torch.device, rank: int) -> torch.device:
    return torch.device("cuda", rank) if device.type == "cuda" else device


def init_group(rank: int, size: int, port: int, device: torch.device) -> TensorParallel:
    if dist.is_initialized():
        raise RuntimeError("a tensor-parallel engine already runs in this process")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    return TensorParallel(rank, size)


def start_workers(
    size: int,
    port: int,
    model_dir: Path,
    dtype,
    device: torch.device,
    config: EngineConfig,
    quant: tuple[str | None, int],
) -> list[BaseProcess]:
    ctx = mp.get_context("spawn")
    args = (size, port, str(model_dir), dtype, str(device), config, quant)
    workers: list[BaseProcess] = [
        ctx.Process(target=worker_main, args=(rank, *args), daemon=True, name=f"qthink-tp{rank}")
        for rank in range(1, size)
    ]
    for w in workers:
        w.start()
    return workers


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


def stop_workers(workers: list[BaseProcess]) -> None:
    if dist.is_initialized():
        dist.broadcast_object_list([None], src=0)
        dist.destroy_process_group()
    for w in workers:
        w.join(timeout=10)
        if w.is_alive():
            w.kill()


def worker_main(
    rank: int,
    size: int,
    port: int,
    model_dir: str,
    dtype,
    device: str,
    config: EngineConfig,
    quant: tuple[str | None, int],
) -> None:
    from qthink.engine.runner import ModelRunner

    dev = rank_device(torch.device(device), rank)
    if dev.type == "cpu":
        # as many as rank 0 (which set num_threads): the slowest rank sets the pace
        torch.set_num_threads(cast(int, config.num_threads))
    tp = init_group(rank, size, port, dev)
    model_config = ModelConfig.from_pretrained(model_dir, hf_overrides=config.model_overrides())
    model = load_model(Path(model_dir), dtype, dev, tp, *quant, model_config)
    num_blocks = handshake(None, model)
    runner = ModelRunner(model, model_config, config, dev, num_blocks)
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            break
        runner.forward(*box[0])
    dist.destroy_process_group()
