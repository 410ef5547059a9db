"""`qthink plan`: the memory budget of a model, context and format, checked before loading anything."""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from qthink.config import (
    DTYPE_ALIASES,
    KV_DTYPE_ALIASES,
    ConfigError,
    EngineConfig,
    ModelConfig,
    apply_overrides,
)
from qthink.engine_flags import add_engine_arguments
from qthink.known_models import known_config, known_names
from qthink.memory import available_memory, kv_bytes_per_token, weight_bytes

GiB = 2**30
OVERHEAD = 0.5 * GiB  # activations, logits, the Python process
# Formats from the most exact to the smallest, for "the flags for this context".
FORMATS = [(None, "bfloat16"), ("int8", "bfloat16"), (None, "int8"), ("int8", "int8"), ("int4", "int8")]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder or Hugging Face id (only config.json is read)")
    add_engine_arguments(
        p,
        only=(
            "dtype",
            "quantization",
            "quantization_group_size",
            "kv_cache_dtype",
            "max_model_len",
            "hf_overrides",
            "rope_scaling",
        ),
    )
    p.add_argument("--max-num-seqs", type=int, default=1, help="sequences at full context (default: 1)")
    p.add_argument(
        "--memory", type=float, help="GiB to plan for (default: the memory available now on this machine)"
    )


@dataclass(frozen=True)
class Format:
    dtype: str
    quantization: str | None
    kv_dtype: str
    group_size: int = 128

    def flags(self) -> str:
        parts = [f"--quantization {self.quantization}"] if self.quantization else []
        return " ".join(parts + [f"--kv-cache-dtype {self.kv_dtype}"])


def plan(cfg: ModelConfig, max_model_len: int, max_num_seqs: int, fmt: Format) -> dict[str, int]:
    weights = weight_bytes(cfg, fmt.dtype, fmt.quantization, fmt.group_size)
    kv = kv_bytes_per_token(cfg, fmt.kv_dtype) * max_model_len * max_num_seqs
    return {
        "weights": weights,
        "kv_cache": kv,
        "overhead": int(OVERHEAD),
        "total": weights + kv + int(OVERHEAD),
    }


def largest_context(cfg: ModelConfig, max_num_seqs: int, fmt: Format, memory: float) -> int:
    """The longest context (a multiple of 256, at most the model's) that fits `memory` bytes."""
    left = memory - weight_bytes(cfg, fmt.dtype, fmt.quantization, fmt.group_size) - OVERHEAD
    tokens = int(left // (kv_bytes_per_token(cfg, fmt.kv_dtype) * max_num_seqs)) if left > 0 else 0
    return min(tokens // 256 * 256, cfg.max_context)


def read_config(model: str, overrides: dict | None = None) -> tuple[ModelConfig, str]:
    """The model's config (under `overrides`) and where it came from: a folder, the Hugging
    Face cache, the configs shipped with qthink, or the hub; nothing else is downloaded."""
    path = Path(model).expanduser()
    if path.is_dir():
        return ModelConfig.from_pretrained(path, hf_overrides=overrides), f"{path}/config.json"
    if model.count("/") != 1 or model.startswith((".", "/", "~")):
        raise ConfigError(f"{model!r} is not a model folder nor a Hugging Face id (org/name)")
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json")
    if isinstance(cached, str):
        return ModelConfig.from_pretrained(
            Path(cached).parent, hf_overrides=overrides
        ), "the Hugging Face cache"
    shipped = known_config(model)
    if shipped is not None:
        return ModelConfig.from_dict(
            apply_overrides(shipped, overrides)
        ), "the published config shipped with qthink"
    why = "HF_HUB_OFFLINE is set"
    if os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false"):
        try:
            folder = Path(hf_hub_download(model, "config.json")).parent
            return ModelConfig.from_pretrained(folder, hf_overrides=overrides), "the hub"
        except Exception as e:  # offline, unknown repo, gated: all one answer
            why = type(e).__name__
    raise ConfigError(
        f"unknown model {model!r}: not a folder, not in the Hugging Face cache, not one qthink knows "
        f"offline ({', '.join(known_names())}), and the hub gave no config.json ({why})"
    )


def run(args) -> int:
    overrides = EngineConfig(
        hf_overrides=getattr(args, "hf_overrides", None), rope_scaling=getattr(args, "rope_scaling", None)
    ).model_overrides()
    cfg, source = read_config(args.model, overrides)
    dtype = getattr(args, "dtype", "auto")
    dtype = cfg.torch_dtype if dtype == "auto" else DTYPE_ALIASES.get(dtype, dtype)
    kv_dtype = getattr(args, "kv_cache_dtype", "auto")
    kv_dtype = dtype if kv_dtype == "auto" else KV_DTYPE_ALIASES.get(kv_dtype, kv_dtype)
    fmt = Format(
        dtype, getattr(args, "quantization", None), kv_dtype, getattr(args, "quantization_group_size", 128)
    )
    length = getattr(args, "max_model_len", None) or cfg.max_context
    budget = plan(cfg, length, args.max_num_seqs, fmt)
    memory, memory_line = _memory(args.memory)
    print(
        f"model        {args.model} ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}; from {source})"
    )
    print(f"context      {length:,} tokens x {args.max_num_seqs} sequence(s), KV {fmt.kv_dtype}")
    print(f"weights      {budget['weights'] / GiB:7.2f} GiB ({fmt.quantization or fmt.dtype})")
    per_token = kv_bytes_per_token(cfg, fmt.kv_dtype)
    print(f"KV cache     {budget['kv_cache'] / GiB:7.2f} GiB ({per_token:,} bytes/token)")
    print(f"overhead     {budget['overhead'] / GiB:7.2f} GiB")
    print(
        f"total        {budget['total'] / GiB:7.2f} GiB, compared with {memory / GiB:.2f} GiB: {memory_line}"
    )
    if budget["total"] <= memory:
        print("fits")
        return 0
    print("DOES NOT FIT")
    for line in advice(cfg, length, args.max_num_seqs, fmt, memory):
        print(line)
    return 1


def advice(cfg: ModelConfig, length: int, seqs: int, fmt: Format, memory: float) -> list[str]:
    """What does fit: the largest context with these flags, and the least lossy flags for this context."""
    lines = []
    longest = largest_context(cfg, seqs, fmt, memory)
    if longest > 0:
        lines.append(f"  with these flags: --max-model-len {longest:,} fits".replace(",", ""))
    else:
        lines.append("  with these flags: not even the weights fit")
    for quant, kv in FORMATS:
        other = Format(fmt.dtype, quant, kv, fmt.group_size)
        if (quant, kv) != (fmt.quantization, fmt.kv_dtype) and plan(cfg, length, seqs, other)[
            "total"
        ] <= memory:
            lines.append(f"  for {length:,} tokens: {other.flags()}")
            break
    else:
        smallest = Format(fmt.dtype, "int4", "int8", fmt.group_size)
        if (smallest.quantization, smallest.kv_dtype) != (fmt.quantization, fmt.kv_dtype):
            best = largest_context(cfg, seqs, smallest, memory)
            lines.append(
                f"  no format holds {length:,} tokens here; {smallest.flags()} holds {best:,}"
                if best > 0
                else f"  no format fits in {memory / GiB:.2f} GiB"
            )
    return lines


def _memory(given: float | None) -> tuple[float, str]:
    """The bytes to compare with, and a line saying which figure that is."""
    if given:
        return given * GiB, f"the {given:g} GiB given with --memory"
    free = available_memory(torch.device("cpu"))
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (
        free,
        f"memory available now on this machine ({total / GiB:.2f} GiB total; --memory N plans for N GiB)",
    )
