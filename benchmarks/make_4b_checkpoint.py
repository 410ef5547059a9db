"""Write a random-weight checkpoint of exactly Qwen3-4B-Thinking-2507's shape (bf16, ~8 GB, sharded).

    python benchmarks/make_4b_checkpoint.py /path/outside/git/qwen3-4b-random

Layer by layer, so peak memory stays near one shard. Speed benchmarks only: the output is noise.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from qthink.random_checkpoint import QWEN3_4B_CONFIG, random_state_dict, write_checkpoint


def main(path: Path) -> None:
    if (path / "model.safetensors.index.json").is_file():
        print(f"{path} exists")
        return
    cfg = dict(QWEN3_4B_CONFIG)
    layers = cfg["num_hidden_layers"]
    write_checkpoint(path, dict(cfg, num_hidden_layers=0), {"model.norm.weight": torch.ones(1)})
    (path / "model.safetensors").unlink()
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    weight_map, total = {}, 0
    for i in range(layers + 1):
        one = dict(cfg, num_hidden_layers=1)
        state = random_state_dict(one, seed=i, dtype=torch.bfloat16)
        if i < layers:
            state = {k.replace("layers.0.", f"layers.{i}."): v for k, v in state.items() if ".layers." in k}
        else:
            state = {k: v for k, v in state.items() if ".layers." not in k}
        name = f"model-{i + 1:05d}-of-{layers + 1:05d}.safetensors"
        save_file(state, path / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(state, name))
        total += sum(t.numel() * t.element_size() for t in state.values())
        print(f"wrote {name}", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
