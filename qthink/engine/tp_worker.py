"""A tensor-parallel rank (1..N-1), run as `python -m qthink.engine.tp_worker REPORT_FD` by rank 0:
its arguments come pickled on standard input, its error goes back through REPORT_FD before it
ends. It never imports the script that started rank 0, so any script (even one on stdin) works."""

import os
import pickle
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import cast

import torch
import torch.distributed as dist

from qthink.config import EngineConfig, ModelConfig
from qthink.engine.tensor_parallel import handshake, init_group, join_store, rank_device
from qthink.loader import load_model


def serve(
    rank: int,
    size: int,
    port: int,
    model_dir: str,
    dtype: torch.dtype,
    device: str,
    config: EngineConfig,
    quant: tuple[str | None, int],
) -> None:
    """Join the group, load this rank's share, then run every step rank 0 broadcasts until it
    broadcasts None."""
    from qthink.engine.runner import ModelRunner

    dev = rank_device(torch.device(device), rank)
    if dev.type == "cpu":
        # as many as rank 0 (which set num_threads): the slowest rank sets the pace
        torch.set_num_threads(cast(int, config.num_threads))
    tp = init_group(rank, size, join_store(port), dev)
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


def exit_when_parent_goes() -> None:
    """Rank 0 holds this rank's standard input open; its end (rank 0 exited, however) ends us."""
    sys.stdin.buffer.read()
    os._exit(0)


def main() -> None:
    report = os.fdopen(int(sys.argv[1]), "w", encoding="utf-8")
    for sig in (signal.SIGINT, signal.SIGTERM):  # sent to the whole group (Ctrl-C, systemd stop):
        signal.signal(sig, signal.SIG_IGN)  # rank 0 handles them, drains, then stops us
    try:
        args = pickle.load(sys.stdin.buffer)
        threading.Thread(target=exit_when_parent_goes, daemon=True).start()
        serve(*args)
    except BaseException:
        try:
            report.write(traceback.format_exc())
            report.flush()
        except OSError:  # rank 0 is gone: nobody to tell
            pass
        os._exit(1)  # not through the process group's destructors, which abort after a failure
    report.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # nor through an interpreter shutdown racing the thread that reads stdin


if __name__ == "__main__":
    main()
