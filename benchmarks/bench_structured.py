"""Per-token cost of grammar-constrained decoding: the same batch with and without the mask;
and what compiling a large grammar on a worker thread costs a thread that keeps stepping.

    python benchmarks/bench_structured.py [--model PATH] [--batch 8] [--output-len 64]

The prompts close the thinking (no <think> open), so the mask applies from the first token;
a free-form JSON object keeps every token constrained for the whole run.
"""

import argparse
import tempfile
import time

import torch

from qthink import LLM, SamplingParams
from qthink.random_checkpoint import tiny_config, write_random_checkpoint


def timed(llm: LLM, prompts, params) -> tuple[float, int]:
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    return time.perf_counter() - start, sum(len(o.outputs[0].token_ids) for o in outs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--output-len", type=int, default=64)
    args = ap.parse_args()
    model = args.model or str(
        write_random_checkpoint(tempfile.mkdtemp(), tiny_config(tie_word_embeddings=False))
    )
    llm = LLM(model=model, max_model_len=512, kv_cache_memory=64 << 20, max_num_seqs=args.batch)
    gen = torch.Generator().manual_seed(0)
    prompts = [
        {"prompt_token_ids": torch.randint(1000, 100_000, (32,), generator=gen).tolist()}
        for _ in range(args.batch)
    ]
    free = SamplingParams(temperature=1.0, seed=1, max_tokens=args.output_len, ignore_eos=True)
    bound = SamplingParams(
        temperature=1.0, seed=1, max_tokens=args.output_len, structured_output={"json_object": True}
    )
    llm.generate(prompts[:2], [free, bound])  # warm-up: builds the grammar's vocabulary index once
    t_free, n_free = timed(llm, prompts, free)
    t_bound, n_bound = timed(llm, prompts, bound)
    per_free, per_bound = t_free / n_free * 1e3, t_bound / n_bound * 1e3
    print(f"batch {args.batch}, vocabulary {llm.engine.model_config.vocab_size}")
    print(f"unconstrained : {per_free:7.3f} ms per token ({n_free} tokens)")
    print(f"json_object   : {per_bound:7.3f} ms per token ({n_bound} tokens)")
    print(
        f"difference    : {per_bound - per_free:7.3f} ms per token ({per_bound / per_free:.2f}x; "
        "rows that finish early leave smaller batches, so this bounds the cost from above)"
    )
    print(f"mask alone    : {mask_cost(llm) * 1e3:7.3f} ms per token (compute the allowed set, apply it)")
    llm.engine.grammars.warm()
    for name, spec in LARGE_GRAMMARS.items():
        seconds, gap, alone = compile_beside_steps(llm, spec)
        print(
            f"compile {name}: {seconds:.2f} s on a worker; a stepping thread's largest gap "
            f"meanwhile {gap * 1e3:.1f} ms, without a compile {alone * 1e3:.1f} ms"
        )


LARGE_GRAMMARS = {
    "100,000 choices": {"choice": [f"answer number {i}" for i in range(100_000)]},
    "5,000-property schema": {
        "json_schema": {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(5_000)}}
    },
}


def compile_beside_steps(llm: LLM, spec: dict) -> tuple[float, float, float]:
    """(compile seconds, the largest gap between steps of a thread doing small tensor work and
    Python meanwhile, the largest gap over as long a time without a compile): a compile that
    held the GIL would show as a gap well above the second figure."""
    x = torch.randn(64, 64)

    def gaps_until(done) -> float:
        last, largest = time.perf_counter(), 0.0
        while not done():
            for _ in range(20):
                x.add(1.0).sum()
            now = time.perf_counter()
            largest, last = max(largest, now - last), now
        return largest

    start = time.perf_counter()
    job = llm.engine.grammars.submit(spec)
    during = gaps_until(job.future.done)
    job.future.result()
    seconds = time.perf_counter() - start
    end = time.perf_counter() + seconds
    return seconds, during, gaps_until(lambda: time.perf_counter() > end)


def mask_cost(llm: LLM, tokens: int = 200) -> float:
    """Seconds per token to compute one row's mask and apply it to its logits, in isolation."""
    state = llm.engine.grammars.state({"json_object": True}, active=True)
    logits = torch.randn(llm.engine.model_config.vocab_size, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for _ in range(tokens):
        allowed = state.allowed()
        token = int(logits.masked_fill(~allowed, float("-inf")).argmax())
        state.observe(token)
    return (time.perf_counter() - start) / tokens


if __name__ == "__main__":
    main()
