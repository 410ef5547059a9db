"""Where a batch-1 decode step's time goes: matmuls, attention, other ops, Python, per precision.

    python benchmarks/bench_step.py /work/bench-data/qwen3-4b-random [--layers 36] [--weights bf16 int4]

The model is the 4B-shape checkpoint of make_4b_checkpoint.py, optionally cut to its first
`--layers` decoder layers (a folder of links beside it; per-layer figures do not change).
Each precision: decode tok/s over a forced 64-token answer, then one profiled stretch of
decode steps, whose op times are summed by kind. "python" is the step's wall time not
spent inside any op: dispatch, the engine's bookkeeping, the scheduler; "ops" counts the
profiled op calls a step makes.

`--outside-matmuls` instead times a decode layer without its weight reads: the model's layer
shape with linears that hand back ready outputs, one thread, CPU time (steady on a busy
machine), the fused native decode step against the layer-by-layer path.
"""

import argparse
import gc
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import qthink.model.attention as attention
from qthink.bench_cli import measure
from qthink.config import ModelConfig
from qthink.engine.engine import LLMEngine
from qthink.engine.sampling_params import SamplingParams
from qthink.model.attention import AttentionMetadata, KVCache
from qthink.model.qwen3 import Qwen3ForCausalLM

PROMPT, OUTPUT, PROFILED_STEPS = 128, 64, 16
QUANTIZATION = {"bf16": None, "int8": "int8", "int4": "int4"}
MATMUL_OPS = (
    "qthink_kernels::linear_",
    "qthink_kernels::gemm_",
    "qthink_kernels::greedy_head",
    "aten::mm",
    "aten::addmm",
    "aten::_weight_",
)
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
    ms: dict[str, float] = defaultdict(float)
    calls = 0
    for event in prof.key_averages():
        ms[kind(event.key)] += event.self_cpu_time_total / 1000 / PROFILED_STEPS
        calls += event.count
    ms["python"] = wall * 1000 / PROFILED_STEPS - sum(ms.values())
    ms["step (profiled)"] = wall * 1000 / PROFILED_STEPS
    ms["ops"] = calls / PROFILED_STEPS
    return dict(ms)


class ReadyOutput(nn.Module):
    """A linear layer without its weight read: hands back an output of the right shape."""

    def __init__(self, out_features: int):
        super().__init__()
        self.out = torch.randn(16, out_features).bfloat16()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out[: x.shape[0]]


def outside_matmuls(model: Path, context: int, layers: int = 8, rounds: int = 7) -> tuple[float, float]:
    """Median CPU microseconds a batch-1 decode layer spends outside its matmuls: (layer-by-layer
    path, fused native step), interleaved."""
    raw = json.loads((model / "config.json").read_text())
    cfg = ModelConfig.from_dict(dict(raw, num_hidden_layers=layers, vocab_size=1024))
    net = Qwen3ForCausalLM(cfg).bfloat16().eval()
    with torch.no_grad():
        for param in net.parameters():
            param.normal_(std=0.02).add_(1.0 if param.dim() == 1 else 0.0)  # norm weights near 1
    for layer in net.model.decoder_layers():
        for block in (layer.self_attn, layer.mlp):
            for name, child in list(block.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(block, name, ReadyOutput(child.out_features))
    kv = (cfg.num_key_value_heads, cfg.head_dim, torch.bfloat16, "cpu")
    caches = [KVCache.allocate(context + 1, *kv) for _ in range(layers)]
    slots = torch.arange(context + 1)[None, :]
    meta = AttentionMetadata(
        slot_mapping=slots[:, -1],
        query_lens=[1],
        context_lens=[context + 1],
        context_slots=[slots[0]],
        decode_slots=slots,
        decode_mask=torch.ones(1, 1, 1, context + 1, dtype=torch.bool),
        decode_lens=torch.tensor([context + 1]),
    )
    ids, positions = torch.tensor([7]), torch.tensor([context])

    def per_layer_us(steps: int = 20) -> float:
        start = time.process_time()
        with torch.inference_mode():
            for _ in range(steps):
                net.hidden_states(ids, positions, meta, caches)
        return (time.process_time() - start) / steps / layers * 1e6

    fused, layered = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(rounds):
            attention.NATIVE_DECODE_ROWS = 16
            fused.append(per_layer_us())
            attention.NATIVE_DECODE_ROWS = 0
            layered.append(per_layer_us())
    finally:
        attention.NATIVE_DECODE_ROWS = 16
        torch.set_num_threads(threads)
    return statistics.median(layered), statistics.median(fused)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--weights", nargs="+", default=["bf16", "int4"], choices=list(QUANTIZATION))
    ap.add_argument("--no-profile", action="store_true", help="decode tok/s only")
    ap.add_argument("--outside-matmuls", action="store_true", help="a layer's time without its weight reads")
    ap.add_argument("--context", type=int, default=PROMPT + OUTPUT // 2, help="with --outside-matmuls")
    args = ap.parse_args()
    if args.outside_matmuls:
        layered, fused = outside_matmuls(args.model, args.context)
        print(
            f"a decode layer outside its matmuls, context {args.context}, one thread, CPU time: "
            f"layer by layer {layered:.0f} us, fused native step {fused:.0f} us"
        )
        return
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
            calls = parts.pop("ops")
            line += "; " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()) + f" ms; {calls:.0f} ops/step"
        print(line, flush=True)
        del engine
        gc.collect()


if __name__ == "__main__":
    main()
