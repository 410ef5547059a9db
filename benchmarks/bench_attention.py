"""Decode attention at long contexts: the native kernel against torch's SDPA on gathered K/V.

    python benchmarks/bench_attention.py [--contexts 512 2048 8192 16384] [--rounds 3]
        [--kv-cache-dtype bf16 int8 fp8]

The 4B shape (32 query heads, 8 KV heads, dim 128), bf16 paged caches with the slots of a
sequence scattered over the cache in blocks of 16, as the engine lays them out; bf16 or 8-bit
caches (`--kv-cache-dtype`: int8 or fp8 with a scale per slot and head, as `--kv-cache-dtype`
of `qthink serve` stores them). Each figure is
the time of one layer's decode attention with a cold cache: a step walks `--layers` layers'
caches in turn, as a decode step does while 8 GB of weights stream past. Cases: one token
(decode), a verification's 5 rows of one sequence (k = 4), and 16 sequences (batch 16). Both
paths run through `Attention._decode`, interleaved for `--rounds` rounds: median (min-max).
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from qthink.kernels import kernel_ops, linear_kernels_available
from qthink.model.attention import Attention, AttentionMetadata, KVCache

HEADS, KV_HEADS, DIM, BLOCK = 32, 8, 128, 16
FORMATS = {"bf16": torch.bfloat16, "int8": torch.int8, "fp8": torch.float8_e4m3fn}
CASES = {"decode": (1, 1), "verify k=4": (5, 1), "batch 16": (1, 16)}  # rows a sequence, sequences


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def metadata(context: int, rows: int, sequences: int, blocks: torch.Tensor) -> AttentionMetadata:
    """Decode metadata: each sequence's `rows` rows attend to context + 1 .. context + rows slots."""
    per_sequence = (context + rows + BLOCK - 1) // BLOCK
    tables, lens = [], []
    for s in range(sequences):
        chosen = blocks[s * per_sequence : (s + 1) * per_sequence]
        table = (chosen[:, None] * BLOCK + torch.arange(BLOCK)).flatten()[: context + rows]
        tables += [table] * rows
        lens += range(context + 1, context + rows + 1)
    slots, decode_lens = torch.stack(tables).contiguous(), torch.tensor(lens)
    return AttentionMetadata(
        slot_mapping=torch.zeros(len(lens), dtype=torch.long),
        query_lens=[1] * len(lens),
        context_lens=lens,
        context_slots=[slots[b, : lens[b]] for b in range(len(lens))],
        decode_slots=slots,
        decode_mask=(torch.arange(slots.shape[1])[None, :] < decode_lens[:, None])[:, None, None, :],
        decode_lens=decode_lens,
    )


def layer_time(layer: Attention, q, meta, caches: list[KVCache], native: bool) -> float:
    """Seconds of one layer's attention, the caches taken in turn (cold), median of 3 walks."""
    os.environ["QTHINK_KERNELS"] = "1" if native else "0"
    walks = []
    for _ in range(4):
        start = time.perf_counter()
        for cache in caches:
            layer._decode(q, meta, cache)
        walks.append((time.perf_counter() - start) / len(caches))
    return statistics.median(walks[1:])


def make_caches(kv: str, slots: int, layers: int) -> list[KVCache]:
    caches = []
    for _ in range(layers):
        cache = KVCache.allocate(slots, KV_HEADS, DIM, FORMATS[kv], "cpu")
        cache.write(torch.arange(slots), *(torch.randn(slots, KV_HEADS, DIM).bfloat16() for _ in range(2)))
        caches.append(cache)
    return caches


def compare(layer: Attention, caches: list[KVCache], meta: AttentionMetadata, rounds: int) -> str:
    """Native and torch interleaved: their median microseconds and the ratio's median (spread)."""
    q = torch.randn(len(meta.query_lens), HEADS, DIM, dtype=torch.bfloat16)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for native in (True, False):
            times[native].append(layer_time(layer, q, meta, caches, native))
    ratios = [t / n for n, t in zip(times[True], times[False])]
    native_us, torch_us = (statistics.median(times[n]) * 1e6 for n in (True, False))
    spread = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
    return f"{native_us:10.0f} {torch_us:10.0f} {spread:>22s}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 2048, 8192, 16384])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=12, help="caches walked in turn (cold reads)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--kv-cache-dtype", nargs="+", choices=list(FORMATS), default=["bf16"])
    args = parser.parse_args()
    if not linear_kernels_available():
        raise SystemExit("the native kernels need an AVX-512 BF16 CPU")
    torch.set_num_threads(args.threads)
    kernel_ops().set_num_threads(args.threads)
    torch.manual_seed(0)
    slots = 16 * BLOCK * ((max(args.contexts) + 5 + BLOCK - 1) // BLOCK)  # batch 16, the largest context
    print(f"/proc/loadavg before: {loadavg()}; {args.threads} threads; {slots} slots x {args.layers} layers")
    layer = Attention(HEADS * DIM, HEADS, KV_HEADS, DIM, bias=False, qk_norm=True, eps=1e-6)
    blocks = torch.randperm(slots // BLOCK)
    print(f"{'case':18s} {'context':>8s} {'native us':>10s} {'torch us':>10s} {'torch / native':>22s}")
    for kv in args.kv_cache_dtype:
        caches = make_caches(kv, slots, args.layers)
        for name, (rows, sequences) in CASES.items():
            for context in args.contexts:
                figures = compare(layer, caches, metadata(context, rows, sequences, blocks), args.rounds)
                print(f"{kv + ' ' + name:18s} {context:8d} {figures}", flush=True)
        del caches
    print(f"/proc/loadavg after: {loadavg()}")


if __name__ == "__main__":
    main()
