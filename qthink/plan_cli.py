"""`qthink plan`: the memory budget of a model, context and format, checked before loading anything."""

import argparse

import torch

from qthink.config import ModelConfig
from qthink.loader import resolve_model
from qthink.memory import KV_BYTES, available_memory, kv_bytes_per_token, weight_bytes

GiB = 2**30
OVERHEAD = 0.5 * GiB  # activations, logits, the Python process


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder or Hugging Face id (only config.json is read)")
    p.add_argument("--max-model-len", type=int, help="default: the model's maximum")
    p.add_argument("--max-num-seqs", type=int, default=1, help="sequences at full context")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--quantization", choices=["int8", "int4"])
    p.add_argument("--quantization-group-size", type=int, default=128, help="int4: inputs per scale")
    p.add_argument("--kv-cache-dtype", default="bfloat16", choices=sorted(KV_BYTES))
    p.add_argument("--memory", type=float, help="GiB available (default: this machine's free memory)")


def plan(
    cfg: ModelConfig,
    max_model_len: int,
    max_num_seqs: int,
    dtype: str,
    quantization: str | None,
    kv_dtype: str,
    group_size: int = 128,
) -> dict[str, int]:
    weights = weight_bytes(cfg, dtype, quantization, group_size)
    kv = kv_bytes_per_token(cfg, kv_dtype) * max_model_len * max_num_seqs
    return {
        "weights": weights,
        "kv_cache": kv,
        "overhead": int(OVERHEAD),
        "total": weights + kv + int(OVERHEAD),
    }


def run(args) -> int:
    cfg = ModelConfig.from_pretrained(resolve_model(args.model))
    length = args.max_model_len or cfg.max_position_embeddings
    budget = plan(
        cfg,
        length,
        args.max_num_seqs,
        args.dtype,
        args.quantization,
        args.kv_cache_dtype,
        args.quantization_group_size,
    )
    have = args.memory * GiB if args.memory else available_memory(torch.device("cpu"))
    print(f"model        {args.model} ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size})")
    print(f"context      {length:,} tokens x {args.max_num_seqs} sequence(s), KV {args.kv_cache_dtype}")
    print(f"weights      {budget['weights'] / GiB:7.2f} GiB ({args.quantization or args.dtype})")
    print(
        f"KV cache     {budget['kv_cache'] / GiB:7.2f} GiB "
        f"({kv_bytes_per_token(cfg, args.kv_cache_dtype):,} bytes/token)"
    )
    print(f"overhead     {budget['overhead'] / GiB:7.2f} GiB")
    print(f"total        {budget['total'] / GiB:7.2f} GiB of {have / GiB:.2f} GiB available")
    if budget["total"] > have:
        print("DOES NOT FIT: use --quantization int4, --kv-cache-dtype int8, or a shorter context")
        return 1
    print("fits")
    return 0
