"""Where a batch-1 decode step's time goes: matmuls, attention, other ops, Python, per precision.

    python benchmarks/bench_step.py /work/bench-data/qwen3-4b-random [--layers 36] [--weights bf16 int4]

The model is the 4B-shape checkpoint of make_4b_checkpoint.py, optionally cut to its first
`--layers` decoder layers (a folder of links beside it; per-layer figures do not change).
Each precision: decode tok/s over a forced 64-token answer, then one profiled stretch of
decode steps, whose op times are summed by kind. "python" is the step's wall time not
spent inside any op: dispatch, the engine's bookkeeping, the scheduler.
"""

import argparse
import gc
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from qthink.bench_cli import measure
from qthink.engine.engine import LLMEngine
from qthink.engine.sampling_params import SamplingParams

PROMPT, OUTPUT, PROFILED_STEPS = 128, 64, 16
QUANTIZATION = {"bf16": None, "int8": "int8", "int4": "int4"}
MATMUL_OPS = ("qthink_kernels::linear_", "qthink_kernels::gemm_", "aten::mm", "aten::addmm", "aten::_weight_")
ATTENTION_OPS = ("qthink_kernels::decode_attention", "aten::_scaled_dot_product", "aten::scaled_dot_product")


def truncated(model: Path, layers: int) -> Path:
    """`model` with only its first `layers` decoder layers: links to the shards that hold them."""
    config = json.loads((model / "config.json").read_text())
    if layers >= config["num_hidden_layers"]:
        return model
    weight_map = json.loads((model / "model.safetensors.index.json").read_text())["weight_map"]
    keep = {
        name: file
        for name, file in weight_map.items()
        if ".layers." not in name or int(name.split(".layers.")[1].split(".")[0]) < layers
    }
    folder = Path(tempfile.mkdtemp(prefix=f"{model.name}-{layers}layers-"))
    for file in set(keep.values()):
        (folder / file).symlink_to(model / file)
    for extra in model.iterdir():
        if extra.suffix != ".safetensors" and extra.name not in (
            "config.json",
            "model.safetensors.index.json",
        ):
            (folder / extra.name).symlink_to(extra)
    (folder / "config.json").write_text(json.dumps(dict(config, num_hidden_layers=layers)))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": keep}))
    return folder


def kind(name: str) -> str:
    if name.startswith(MATMUL_OPS):
        return "matmuls"
    if name.startswith(ATTENTION_OPS):
        return "attention"
    return "other ops"


def breakdown(engine: LLMEngine) -> dict[str, float]:
    """Milliseconds per decode step by kind, from the profiler's self times of top-level ops."""
    params = SamplingParams(temperature=0, max_tokens=PROFILED_STEPS + 4, ignore_eos=True)
    engine.add_request(list(range(1000, 1000 + PROMPT)), params)
    engine.step()  # the prefill
    engine.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(PROFILED_STEPS):
            engine.step()
        wall = time.perf_counter() - start
    while engine.has_unfinished():
        engine.step()
    ms = defaultdict(float)
    for event in prof.key_averages():
        ms[kind(event.key)] += event.self_cpu_time_total / 1000 / PROFILED_STEPS
    ms["python"] = wall * 1000 / PROFILED_STEPS - sum(ms.values())
    ms["step (profiled)"] = wall * 1000 / PROFILED_STEPS
    return dict(ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--weights", nargs="+", default=["bf16", "int4"], choices=list(QUANTIZATION))
    ap.add_argument("--no-profile", action="store_true", help="decode tok/s only")
    args = ap.parse_args()
    model = truncated(args.model, args.layers)
    for weights in args.weights:
        engine = LLMEngine(
            str(model),
            dtype="bfloat16",
            quantization=QUANTIZATION[weights],
            max_model_len=PROMPT + OUTPUT + 16,
            max_num_seqs=1,
            kv_cache_memory=256 << 20,
            enable_prefix_caching=False,
        )
        measure(engine, 16, 4, 1)  # warm-up
        rate = measure(engine, PROMPT, OUTPUT, 1)["decode_tok_s"]
        line = (
            f"{weights}: {args.layers} layers, {torch.get_num_threads()} threads, decode@1 {rate:.2f} tok/s"
        )
        line += f" ({1000 / rate:.1f} ms/step)"
        if not args.no_profile:
            parts = breakdown(engine)
            line += "; " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()) + " ms"
        print(line, flush=True)
        del engine
        gc.collect()


if __name__ == "__main__":
    main()
