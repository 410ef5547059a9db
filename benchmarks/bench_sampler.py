"""Per-step time of the batched sampler against a naive per-row loop, on Qwen3's vocabulary.

Four settings: greedy, Qwen's recommended sampling (temperature 0.6, top_p 0.95, top_k 20),
top-p without top-k (temperature 0.7, top_p 0.9), and every feature on (penalties over a
prompt and an output, min-p, min_tokens, top-5 logprobs, half the rows seeded). A step is
what the engine pays per decode: building the batch from the rows' settings and token
lists, then `sample`. The baseline does the same
work one row at a time with plain torch ops, as a first implementation would; both are
timed interleaved in one run and reported as a ratio.

    python benchmarks/bench_sampler.py [--batch 1 16 64] [--repeats 7] [--vocab 151936] [--threads 1]
"""

import argparse
import statistics
import time

import torch

from qthink.engine.sampler import SamplingBatch, sample
from qthink.engine.sampling_params import SamplingParams

PROMPT_LEN = 1024
OUTPUT_LEN = 512
EOS = (151645,)

SETTINGS = {
    "greedy": dict(temperature=0.0, top_p=1.0, top_k=0),
    "qwen default": dict(temperature=0.6, top_p=0.95, top_k=20),
    "top-p only": dict(temperature=0.7, top_p=0.9, top_k=0),
    "all features": dict(
        temperature=0.8,
        top_p=0.9,
        top_k=50,
        min_p=0.02,
        presence_penalty=1.0,
        frequency_penalty=0.3,
        repetition_penalty=1.1,
        min_tokens=OUTPUT_LEN + 1,
        logprobs=5,
    ),
}


def naive_sample(logits, params, prompts, outputs, generators, global_generator):
    """One row at a time, every step spelled out over the whole vocabulary."""
    tokens, logprobs, ranks, tops = [], [], [], []
    for row, p in enumerate(params):
        raw = logits[row]
        x = raw.clone()
        if p.min_tokens > len(outputs[row]):
            x[list(EOS) + p.stop_token_ids] = float("-inf")
        seen = torch.zeros_like(x, dtype=torch.bool)
        seen[torch.tensor(prompts[row] + outputs[row])] = True
        x = torch.where(
            seen & (x > 0), x / p.repetition_penalty, torch.where(seen, x * p.repetition_penalty, x)
        )
        counts = torch.bincount(torch.tensor(outputs[row], dtype=torch.long), minlength=x.numel()).float()
        x = x - p.frequency_penalty * counts - p.presence_penalty * (counts > 0)
        if p.temperature < 1e-5:
            token = int(x.argmax())
        else:
            token = naive_random_token(x / p.temperature, p, generators[row] or global_generator)
        row_logprobs = raw.log_softmax(-1)
        tokens.append(token)
        logprobs.append(row_logprobs[token])
        ranks.append(int((row_logprobs > row_logprobs[token]).sum()) + 1)
        if p.logprobs:
            tops.append(row_logprobs.topk(p.logprobs))
    return tokens, logprobs, ranks, tops


def naive_random_token(x, p, generator) -> int:
    probs = x.softmax(-1)
    x = x.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
    sorted_x, order = x.sort(descending=True)
    if p.top_k and p.top_k > 0:
        sorted_x[p.top_k :] = float("-inf")
    sorted_probs = sorted_x.softmax(-1)
    sorted_x[(sorted_probs.cumsum(-1) - sorted_probs) >= p.top_p] = float("-inf")
    choice = torch.multinomial(sorted_x.softmax(-1), 1, generator=generator)
    return int(order[choice])


def batched_step(logits, params, prompts, outputs, generators, global_generator, vocab):
    batch = SamplingBatch.build(
        params, prompts, outputs, generators, vocab, "cpu", [EOS] * len(params), global_generator
    )
    return sample(logits, batch)


def workload(batch_size: int, setting: dict, vocab: int):
    rng = torch.Generator().manual_seed(batch_size)
    logits = torch.randn(batch_size, vocab, generator=rng) * 4
    prompts = torch.randint(0, vocab, (batch_size, PROMPT_LEN), generator=rng).tolist()
    outputs = torch.randint(0, vocab, (batch_size, OUTPUT_LEN), generator=rng).tolist()
    params = [SamplingParams(**setting) for _ in range(batch_size)]
    seeded = setting is SETTINGS["all features"]
    generators = [torch.Generator().manual_seed(r) if seeded and r % 2 else None for r in range(batch_size)]
    return logits, params, prompts, outputs, generators, torch.Generator().manual_seed(0)


def elapsed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def compare(work, vocab: int, repeats: int) -> tuple[float, float]:
    """Median ms of the batched and the per-row step, timed interleaved so machine swings hit both."""
    batched = lambda: batched_step(*work, vocab)
    naive = lambda: naive_sample(*work)
    batched(), naive()  # warm-up
    fast, slow = [], []
    for _ in range(repeats):
        fast.append(elapsed_ms(batched))
        slow.append(elapsed_ms(naive))
    return statistics.median(fast), statistics.median(slow)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--threads", type=int, help="torch threads (one is steadiest on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"vocab {args.vocab}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'batch':>5}  {'setting':<13} {'batched ms':>10} {'per-row ms':>10} {'speed-up':>8}")
    for batch_size in args.batch:
        for name, setting in SETTINGS.items():
            work = workload(batch_size, setting, args.vocab)
            fast_ms, slow_ms = compare(work, args.vocab, args.repeats)
            print(f"{batch_size:>5}  {name:<13} {fast_ms:>10.2f} {slow_ms:>10.2f} {slow_ms / fast_ms:>7.1f}x")


if __name__ == "__main__":
    main()
