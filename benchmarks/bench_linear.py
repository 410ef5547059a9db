"""Linear-layer throughput on the Qwen3-4B shapes: torch's ops against qthink's kernels.

At M=1 (one decoding sequence) every weight byte is read once per call, so the figure of
merit is GB/s of weights streamed; at M=16 and M=256 it is GFLOP/s. Every case cycles
through enough copies of its weights to defeat the caches, as real decoding does, and all
cases of a shape are timed interleaved so bandwidth swings hit them alike. Ratios are
against `F.linear` on bf16 weights in the same run.

    python benchmarks/bench_linear.py [--m 1 16 256] [--shapes gate down] [--repeats 20]
"""

import argparse
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qthink.kernels import kernel_ops, linear_kernels_available
from qthink.model.quant import Bf16Linear, Int4Linear, Int8Linear, unpack_int4

LAYERS = 36
# name: (out_features, in_features, uses per token)
SHAPES = {
    "q": (4096, 2560, LAYERS),
    "k": (1024, 2560, LAYERS),
    "v": (1024, 2560, LAYERS),
    "o": (2560, 4096, LAYERS),
    "gate": (9728, 2560, LAYERS),
    "up": (9728, 2560, LAYERS),
    "down": (2560, 9728, LAYERS),
    "lm_head": (151936, 2560, 1),
}
GROUP_SIZE = 128


@dataclass
class Case:
    """One way to compute x @ W.T: its weight copies, bytes per copy, and the call."""

    name: str
    weights: list
    weight_bytes: int
    call: Callable


def copies(first, nbytes: int, pool_bytes: int) -> list:
    """`first` and enough copies of it at other addresses to fill `pool_bytes` (at least two)."""
    return [first] + [copy.deepcopy(first) for _ in range(max(1, math.ceil(pool_bytes / nbytes) - 1))]


def torch_int4_pack(module: Int4Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """The same int4 weights in torch's CPU layout: (q - 8) * scale + zero, zero = offset + 8 * scale."""
    packed_rows, scale, offset = module.row_layout()
    q = unpack_int4(packed_rows).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2)
    scale, offset = scale.float(), offset.float()
    scales_and_zeros = torch.stack((scale, offset + 8 * scale), dim=-1).transpose(0, 1)
    return packed, scales_and_zeros.contiguous().to(torch.bfloat16)


def linear_module(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    return linear


def make_cases(n: int, k: int, m: int, pool_bytes: int) -> list[Case]:
    weight = torch.randn(n, k, dtype=torch.bfloat16) / math.sqrt(k)
    int4_module = Int4Linear(linear_module(weight), GROUP_SIZE)
    dense = copies(weight, 2 * n * k, pool_bytes)
    bf16 = [Bf16Linear(linear_module(w)) for w in dense]
    int8_module = Int8Linear(linear_module(weight))
    int8 = copies(int8_module, n * k, pool_bytes)
    int8_torch = copies((int8_module.packed_rows(), int8_module.scale), n * k, pool_bytes)
    int4 = copies(int4_module, n * k // 2, pool_bytes)
    int4_torch = copies(torch_int4_pack(int4_module), n * k // 2, pool_bytes)
    cases = [
        Case("torch F.linear bf16", dense, 2 * n * k, lambda x, w: F.linear(x, w)),
        Case("torch _weight_int8pack_mm", int8_torch, n * k, torch_int8_mm),
        Case("torch _weight_int4pack_mm", int4_torch, n * k // 2, torch_int4_mm),
        Case("qthink Bf16Linear", bf16, 2 * n * k, lambda x, w: w(x)),
        Case("qthink Int8Linear", int8, n * k, lambda x, w: w(x)),
        Case("qthink Int4Linear", int4, n * k // 2, lambda x, w: w(x)),
    ]
    if m > 1 and linear_kernels_available():  # both native paths, whichever the modules pick
        ops = kernel_ops()
        cases += [
            Case("native GEMV bf16", dense, 2 * n * k, lambda x, w: ops.linear_bf16(x, w, None)),
            Case("native GEMV int8", int8, n * k, lambda x, w: ops.linear_int8(x, w.weight, w.scale, None)),
            Case("native GEMV int4", int4, n * k // 2, native_int4_gemv),
            Case(
                "native tiled GEMM int8", int8, n * k, lambda x, w: ops.gemm_int8(x, w.weight, w.scale, None)
            ),
        ]
    return cases


def torch_int8_mm(x: torch.Tensor, w: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return torch.ops.aten._weight_int8pack_mm(x, *w)


def torch_int4_mm(x: torch.Tensor, w: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, w[0], GROUP_SIZE, w[1])


def native_int8_gemm(x: torch.Tensor, w: Int8Linear) -> torch.Tensor:
    return kernel_ops().gemm_int8(x, w.weight, w.scale, None)


def native_int4_gemv(x: torch.Tensor, w: Int4Linear) -> torch.Tensor:
    return kernel_ops().linear_int4(x, w.weight, w.scale, w.offset, w.group_size, w.out_features, None)


def time_cases(cases: list[Case], x: torch.Tensor, repeats: int, clock=time.perf_counter) -> dict[str, float]:
    """Best seconds per call of each case, calls interleaved across cases and weight copies."""
    best = {case.name: math.inf for case in cases}
    for case in cases:  # warm-up: oneDNN primitives, page faults, kernel build
        case.call(x, case.weights[0])
    for repeat in range(repeats):
        for case in cases:
            weight = case.weights[repeat % len(case.weights)]
            start = clock()
            case.call(x, weight)
            best[case.name] = min(best[case.name], clock() - start)
    return best


def report(shape: str, n: int, k: int, m: int, cases: list[Case], best: dict[str, float]) -> None:
    baseline = best["torch F.linear bf16"]
    print(f"\n{shape}: {n}x{k}, M={m}")
    unit = "GB/s" if m == 1 else "GFLOP/s"
    for case in cases:
        seconds = best[case.name]
        rate = case.weight_bytes / seconds / 1e9 if m == 1 else 2 * m * n * k / seconds / 1e9
        print(f"  {case.name:34s} {seconds * 1e3:9.3f} ms {rate:8.1f} {unit}  x{baseline / seconds:5.2f}")


def run(m: int, shapes: list[str], repeats: int, pool_bytes: int, clock) -> dict[str, float]:
    """Per-token milliseconds of all linears (uses per token x best time) for each case."""
    totals: dict[str, float] = {}
    for shape in shapes:
        n, k, uses = SHAPES[shape]
        x = torch.randn(m, k, dtype=torch.bfloat16)
        cases = make_cases(n, k, m, pool_bytes)
        best = time_cases(cases, x, repeats, clock)
        report(shape, n, k, m, cases, best)
        for name, seconds in best.items():
            totals[name] = totals.get(name, 0.0) + uses * seconds
        del cases
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, nargs="+", default=[1, 16, 256], help="rows of x")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--pool-gb", type=float, default=1.0, help="GB of weights cycled per case")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="one thread, timed by its CPU time: steady on a machine shared with other work",
    )
    args = parser.parse_args()
    threads = 1 if args.cpu_time else args.threads
    clock = time.thread_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {threads} threads, native kernels: {linear_kernels_available()}")
    for m in args.m:
        shapes = [s for s in args.shapes if m <= 16 or s != "lm_head"]  # prefill samples one row
        totals = run(m, shapes, args.repeats, int(args.pool_gb * 1e9), clock)
        if m == 1 and len(shapes) == len(SHAPES):
            baseline = totals["torch F.linear bf16"]
            print("\nAll linears of one decode step (36 layers + lm_head), M=1:")
            for name, seconds in totals.items():
                rate = f"{1 / seconds:6.2f} tok/s"
                print(f"  {name:34s} {seconds * 1e3:8.1f} ms  {rate}  x{baseline / seconds:5.2f}")


if __name__ == "__main__":
    main()
