"""Continuous batching vs one request at a time on the same model: prints tokens/s and the ratio.

    python benchmarks/bench_throughput.py [--model PATH] [--requests 16] [--prompt-len 128] [--output-len 64]

Without --model it uses a random-weight checkpoint of a small Qwen3 shape written to a temp folder.
"""

import argparse
import tempfile
import time

import torch

from qthink import LLM, SamplingParams
from qthink.random_checkpoint import write_small_checkpoint


def timed_generate(llm: LLM, prompts, params) -> tuple[float, int]:
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    return time.perf_counter() - start, sum(len(o.outputs[0].token_ids) for o in outs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    args = ap.parse_args()
    model = args.model or str(write_small_checkpoint(tempfile.mkdtemp()))
    llm = LLM(
        model=model,
        dtype=args.dtype,
        max_model_len=args.prompt_len + args.output_len + 16,
        max_num_seqs=args.requests,
        max_num_batched_tokens=4096,
        enable_prefix_caching=False,
    )
    gen = torch.Generator().manual_seed(0)
    prompts = [
        {"prompt_token_ids": torch.randint(1000, 100_000, (args.prompt_len,), generator=gen).tolist()}
        for _ in range(args.requests)
    ]
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    llm.generate(prompts[:2], params)  # warm-up: one-off kernel set-up must not be timed
    serial_s = serial_tokens = 0
    for p in prompts:
        s, n = timed_generate(llm, p, params)
        serial_s, serial_tokens = serial_s + s, serial_tokens + n
    batched_s, batched_tokens = timed_generate(llm, prompts, params)
    serial, batched = serial_tokens / serial_s, batched_tokens / batched_s
    print(
        f"{args.requests} requests, prompt {args.prompt_len}, output {args.output_len}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"one at a time : {serial:8.1f} output tok/s")
    print(f"all at once   : {batched:8.1f} output tok/s")
    print(f"ratio         : {batched / serial:8.2f}x")


if __name__ == "__main__":
    main()
