"""`qthink bench`: prefill and decode speed of a model through the engine, at several batch sizes."""

import argparse
import time
from typing import cast

import torch

from qthink.chat_cli import add_model_arguments, engine_from_args
from qthink.config import EngineConfig
from qthink.engine.engine import LLMEngine
from qthink.engine.sampling_params import SamplingParams


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16], help="concurrent sequences")


def measure(engine: LLMEngine, prompt_len: int, output_len: int, batch: int, seed: int = 0) -> dict:
    """Times one batch: the prefill steps, then the decode steps (forced length, greedy)."""
    gen = torch.Generator().manual_seed(seed)
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    for _ in range(batch):
        engine.add_request(torch.randint(1000, 100_000, (prompt_len,), generator=gen).tolist(), params)
    start = time.perf_counter()
    prefill_done: float | None = None
    while engine.has_unfinished():
        failed = [out.error for out in engine.step() if out.error]
        if failed:
            raise RuntimeError(f"a benchmark request failed inside the engine: {failed[0]}")
        if prefill_done is None and all(s.num_output_tokens > 0 for s in engine.scheduler.running):
            prefill_done = time.perf_counter()
    end = time.perf_counter()
    decode_tokens = batch * (output_len - 1)
    spec = engine.speculator.stats() if engine.speculator is not None else {}
    prefill_done = cast(float, prefill_done)  # the first step prefills, so it is set once the loop ends
    return {
        **spec,
        "batch": batch,
        "prefill_tok_s": batch * prompt_len / (prefill_done - start),
        "decode_tok_s": decode_tokens / (end - prefill_done),
        "seconds": end - start,
    }


DEFAULTS = EngineConfig()


def bench_settings(args) -> dict:
    """What the benchmark needs beyond the flags given: a context for its prompt and output, and
    room to run its largest batch in one step (set before the engine starts, never patched)."""
    batch = max(args.batch)
    chunk = getattr(args, "max_num_batched_tokens", DEFAULTS.max_num_batched_tokens)
    return {
        "max_model_len": getattr(args, "max_model_len", args.prompt_len + args.output_len + 16),
        "max_num_seqs": max(getattr(args, "max_num_seqs", DEFAULTS.max_num_seqs), batch),
        "max_num_batched_tokens": max(chunk, args.prompt_len * batch),
    }


def run(args) -> int:
    engine = engine_from_args(args, **bench_settings(args))
    measure(engine, min(args.prompt_len, 16), 4, 1)  # warm-up: one-off kernel set-up is not timed
    print(
        f"{engine.model_dir.name}: dtype {engine.dtype}, quantization {engine.quantization or 'none'}, "
        f"{torch.get_num_threads()} threads, prompt {args.prompt_len}, output {args.output_len}"
    )
    spec = engine.speculator
    print(
        f"{'batch':>5} {'prefill tok/s':>14} {'decode tok/s':>13}"
        + ("  speculative decoding" if spec else "")
    )
    for b in args.batch:
        if spec is not None:
            spec.reset_stats()
        r = measure(engine, args.prompt_len, args.output_len, b)
        line = f"{b:>5} {r['prefill_tok_s']:>14.1f} {r['decode_tok_s']:>13.2f}"
        if spec is not None:
            line += (
                f"  drafted {r['spec_decode_num_draft_tokens']},"
                f" accepted {r['spec_decode_num_accepted_tokens']}"
                f" ({r['spec_decode_acceptance_rate']:.0%}), mean accepted length"
                f" {r['spec_decode_mean_accepted_length']:.2f}"
            )
        print(line)
    return 0
