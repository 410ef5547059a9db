"""Tensor parallelism on CPU: TP=2 (gloo, one thread per rank) against TP=1 on the same model.

    python benchmarks/bench_tensor_parallel.py [--model PATH] [--requests 4] [--output-len 32]

On a 2-core machine TP=2 is expected to be slower (two processes share the cores and every layer
adds two all-reduces); the point is that the outputs are identical. Prints both speeds and the ratio.
"""

import argparse
import tempfile
import time

import torch

from qthink import LLM, SamplingParams
from qthink.random_checkpoint import write_small_checkpoint


def run(model: str, tp: int, prompts, params) -> tuple[float, list[list[int]]]:
    llm = LLM(
        model=model, dtype="bfloat16", tensor_parallel_size=tp, max_model_len=512, kv_cache_memory=64 << 20
    )
    try:
        llm.generate(prompts[:1], params)  # warm-up
        start = time.perf_counter()
        outs = llm.generate(prompts, params)
        seconds = time.perf_counter() - start
    finally:
        llm.engine.close()
    return sum(len(o.outputs[0].token_ids) for o in outs) / seconds, [o.outputs[0].token_ids for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--output-len", type=int, default=32)
    args = ap.parse_args()
    model = args.model or str(write_small_checkpoint(tempfile.mkdtemp()))
    gen = torch.Generator().manual_seed(0)
    prompts = [
        {"prompt_token_ids": torch.randint(1000, 100_000, (64,), generator=gen).tolist()}
        for _ in range(args.requests)
    ]
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    one, out_one = run(model, 1, prompts, params)
    two, out_two = run(model, 2, prompts, params)
    print(f"TP=1: {one:8.1f} tok/s\nTP=2: {two:8.1f} tok/s\nratio TP=2/TP=1: {two / one:.2f}x")
    print("outputs identical:", out_one == out_two)


if __name__ == "__main__":
    main()
