"""Speculative decoding: suffix-drafting speedup on qthink-nano, verify-step cost on the 4B shape, projection.

    python benchmarks/bench_speculative.py [--checkpoint /work/bench-data/qwen3-4b-random] [--rounds 3]
        [--layers N] [--weights bf16 int4] [--only-4b | --skip-4b]

1. qthink-nano, held-out arithmetic tasks (new ones every round, none repeated), greedy, one
   request at a time: decode tok/s with and without suffix speculation (same outputs
   required), interleaved rounds; acceptance rate, mean accepted length, tokens a step.
2. 4B shape (random weights; benchmarks/make_4b_checkpoint.py writes it; --layers keeps the
   first N decoder layers), bf16 and int4, batch 1: time of one verification step over k + 1
   tokens against a one-token decode step, k = 2..8; then by batch size 1..16 at the
   configured k, with the acceptance rate each batch needs to break even (the switch-off).
3. A projection (not a measurement) of the 4B speedup at nano's measured draft statistics.
4. qthink-nano at batch 16: speculation on (the automatic batch switch-off) against off.
Ratios within one run are what counts: the machine's bandwidth swings over minutes.
"""

import argparse
import gc
import random
import statistics
import time
from pathlib import Path

from bench_step import QUANTIZATION, truncated

from qthink.demo import default_model_path
from qthink.engine.engine import LLMEngine
from qthink.engine.sampling_params import SamplingParams
from qthink.engine.scheduler import ScheduledBatch
from qthink.nano.data import arithmetic
from qthink.nano.evaluate import HELD_OUT_SEED

# Suffix drafting: n-gram lookup over the sequence, then over earlier requests' texts. Every
# request of the run has its own held-out task, so no answer is ever drafted from itself.
NGRAM = {"method": "suffix", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 4}
NANO = {"max_model_len": 1024, "kv_cache_memory": 64 << 20, "max_num_seqs": 16}
GREEDY = SamplingParams(temperature=0, max_tokens=300)


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def nano_prompts(engine: LLMEngine, n: int) -> list[list[int]]:
    """n distinct held-out tasks (a repeated task could be drafted from its own earlier answer)."""
    rng = random.Random(HELD_OUT_SEED)
    tok = engine.tokenizer
    prompts: list[list[int]] = []
    while len(prompts) < n:
        prompt = tok.apply_chat_template(arithmetic(rng)[:-1], add_generation_prompt=True, tokenize=True)
        if prompt not in prompts:
            prompts.append(prompt)
    return prompts


def run_all(
    engine: LLMEngine, prompts: list[list[int]], concurrent: bool
) -> tuple[float, list[list[int]], int]:
    """Decode tok/s over the prompts (one at a time, or all at once), outputs, engine steps."""
    outputs, tokens, steps, elapsed = [], 0, 0, 0.0
    groups = [prompts] if concurrent else [[p] for p in prompts]
    for group in groups:
        ids = [engine.add_request(p, GREEDY).request_id for p in group]
        done = {}
        start = time.perf_counter()
        while engine.has_unfinished():
            steps += 1
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out.outputs[0].token_ids
        elapsed += time.perf_counter() - start
        outputs += [done[i] for i in ids]
        tokens += sum(len(done[i]) for i in ids)
    return tokens / elapsed, outputs, steps


def nano_speedup(rounds: int, n: int) -> dict:
    model = str(default_model_path())
    plain = LLMEngine(model, **NANO)
    spec = LLMEngine(model, **NANO, speculative_config=NGRAM)
    tasks = nano_prompts(plain, 2 + n * rounds)  # distinct tasks: warm-up, then n per round
    run_all(plain, tasks[:2], False)  # warm-up
    run_all(spec, tasks[:2], False)
    spec.speculator.reset_stats()  # statistics of the timed runs only
    on, off, steps_on, tokens = [], [], 0, 0
    for r in range(rounds):
        prompts = tasks[2 + r * n : 2 + (r + 1) * n]
        rate_off, out_off, _ = run_all(plain, prompts, False)
        rate_on, out_on, steps = run_all(spec, prompts, False)
        if out_on != out_off:
            raise SystemExit("speculation changed greedy output: the benchmark is void")
        off.append(rate_off)
        on.append(rate_on)
        steps_on += steps
        tokens += sum(len(o) for o in out_on)
    stats = spec.stats()
    print(
        f"## qthink-nano, {n} new held-out arithmetic tasks a round, greedy, batch 1, "
        f"{NGRAM['method']} k={NGRAM['num_speculative_tokens']} ({rounds} rounds)"
    )
    print(f"  off  {statistics.median(off):8.1f} tok/s   runs {', '.join(f'{r:.1f}' for r in off)}")
    print(f"  on   {statistics.median(on):8.1f} tok/s   runs {', '.join(f'{r:.1f}' for r in on)}")
    ratio = statistics.median(on) / statistics.median(off)
    print(f"  speedup {ratio:.2f}x (target >= 2.0x: {'met' if ratio >= 2 else 'NOT met'}); outputs identical")
    print(
        f"  acceptance rate {stats['spec_decode_acceptance_rate']:.2f}, mean accepted length "
        f"{stats['spec_decode_mean_accepted_length']:.2f}, drafts in "
        f"{stats['spec_decode_num_drafts']} of {steps_on} steps, {tokens / steps_on:.2f} tokens a step"
    )
    return {**stats, "steps": steps_on, "tokens": tokens}


def four_b_engine(checkpoint: str, quantization: str | None, context: int, batch: int):
    """The 4B-shape engine with `batch` sequences decoding after `context` prompt tokens."""
    engine = LLMEngine(
        checkpoint,
        dtype="bfloat16",
        quantization=quantization,
        max_model_len=context + 64,
        max_num_seqs=batch,
        max_num_batched_tokens=max(2048, context),
        kv_cache_memory=batch * (context + 64) * 150_000,
        enable_prefix_caching=False,
    )
    rng = random.Random(0)
    for _ in range(batch):
        prompt = [rng.randrange(1000, 100000) for _ in range(context)]
        engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))
    while any(s.num_output_tokens == 0 for s in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    seqs = list(engine.scheduler.running)
    for seq in seqs:
        engine.blocks.grow(seq, 1 + 8)
    return engine, seqs


def step_times(engine: LLMEngine, seqs, ks: list[int], rounds: int) -> dict[int, float]:
    """Median time of one step in which every sequence verifies k drafted tokens (k = 0: plain
    decode), with the k values interleaved so a bandwidth swing hits all alike."""

    def one(k: int) -> float:
        for seq in seqs:
            seq.draft_ids = seq.token_ids[:k]
        batch = ScheduledBatch(list(seqs), [1 + k] * len(seqs))
        start = time.perf_counter()
        engine.runner.run(batch)
        return time.perf_counter() - start

    times = {k: [] for k in [0, *ks]}
    for k in times:
        one(k)  # warm-up (oneDNN primitives per shape)
    for _ in range(rounds):
        for k in times:
            times[k].append(one(k))
    for seq in seqs:
        seq.draft_ids = []
    return {k: statistics.median(v) for k, v in times.items()}


def verify_costs(checkpoint: str, quantization: str | None, ks: list[int], rounds: int, context: int) -> dict:
    """A k + 1 token verification step over a one-token decode step, batch 1."""
    engine, seqs = four_b_engine(checkpoint, quantization, context, 1)
    times = step_times(engine, seqs, ks, rounds)
    name = quantization or "bf16"
    print(f"## 4B shape, {name}, batch 1, {context}-token context: one-token decode {times[0] * 1000:.0f} ms")
    ratios = {}
    for k in ks:
        ratios[k] = times[k] / times[0]
        mark = f" (target <= 1.25x: {'met' if ratios[k] <= 1.25 else 'NOT met'})" if k == 4 else ""
        print(f"  k={k}: verify {times[k] * 1000:7.0f} ms = {ratios[k]:.2f}x decode{mark}")
    return ratios


def batch_costs(checkpoint: str, quantization: str | None, rounds: int, context: int, k: int) -> None:
    """Where verification stops paying: at batch B, a step in which every sequence verifies k
    drafts against a plain decode step. Speculation pays while this ratio is below the mean
    accepted length (tokens per verifying step); the largest batch where it stays below the
    break-even printed here is the switch-off (speculative_config disable_by_batch_size)."""
    name = quantization or "bf16"
    print(f"## 4B shape, {name}: a step verifying k={k} per sequence over a decode step, by batch size")
    print(f"   ({context}-token contexts; acceptance needed = the per-token acceptance a at which")
    print("   (1 - a^(k+1)) / (1 - a), the mean accepted length, equals the ratio)")
    engine, seqs = four_b_engine(checkpoint, quantization, context, 16)
    for batch in (1, 2, 3, 4, 6, 8, 12, 16):
        times = step_times(engine, seqs[:batch], [k], rounds)
        ratio = times[k] / times[0]
        print(
            f"  batch {batch:>2}: decode {times[0] * 1000:7.1f} ms, verify {times[k] * 1000:7.1f} ms = "
            f"{ratio:.2f}x, acceptance needed {break_even(ratio, k):.2f}"
        )


def break_even(ratio: float, k: int) -> float:
    """The per-token acceptance rate at which k drafts yield `ratio` tokens per step on average
    (1.0 where even full acceptance does not)."""
    if ratio >= k + 1:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(40):
        a = (low + high) / 2
        if sum(a**i for i in range(k + 1)) < ratio:
            low = a
        else:
            high = a
    return low


def projection(nano: dict, ratios: dict[int, float], name: str) -> None:
    """Steps with a draft cost a verify step at nano's k, the others a decode step; tokens as on nano."""
    spec_steps = nano["spec_decode_num_drafts"]
    plain_steps = nano["steps"] - spec_steps
    cost = plain_steps + spec_steps * ratios[NGRAM["num_speculative_tokens"]]
    print(
        f"  PROJECTION ({name}, not a measurement): {nano['tokens'] / cost:.2f}x decode speed "
        "at nano's draft statistics"
    )


def batch16(rounds: int) -> None:
    model = str(default_model_path())
    plain = LLMEngine(model, **NANO)
    auto = LLMEngine(model, **NANO, speculative_config=NGRAM)
    tasks = nano_prompts(plain, 16 * (rounds + 1))  # fresh tasks every round, as above
    run_all(plain, tasks[:16], True)
    run_all(auto, tasks[:16], True)
    auto.speculator.reset_stats()
    off, on, steps_off, steps_on = [], [], 0, 0
    for r in range(1, rounds + 1):
        prompts = tasks[16 * r : 16 * (r + 1)]
        rate, _, steps = run_all(plain, prompts, True)
        off.append(rate)
        steps_off += steps
        rate, _, steps = run_all(auto, prompts, True)
        on.append(rate)
        steps_on += steps
    ratio = statistics.median(on) / statistics.median(off)
    print(
        f"## qthink-nano, batch 16 ({rounds} rounds): "
        f"off {statistics.median(off):.1f} tok/s, on {statistics.median(on):.1f}"
    )
    print(
        f"  on/off {ratio:.2f}x (speculation switches off above "
        f"{auto.speculator.config.disable_by_batch_size} decoding sequences: "
        f"{auto.speculator.num_drafts} drafts, {steps_on} steps on against {steps_off} off)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="/work/bench-data/qwen3-4b-random")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=20, help="nano held-out tasks per round")
    ap.add_argument("--context", type=int, default=512, help="4B shape: prompt tokens before decoding")
    ap.add_argument("--batch-context", type=int, default=128, help="4B shape, batch sizes: prompt tokens")
    ap.add_argument("--layers", type=int, default=36, help="4B shape: keep the first N decoder layers")
    ap.add_argument("--weights", nargs="+", default=["bf16", "int4"], choices=list(QUANTIZATION))
    ap.add_argument("--skip-4b", action="store_true")
    ap.add_argument("--only-4b", action="store_true", help="4B verify costs only (no nano, no projection)")
    args = ap.parse_args()
    print(f"/proc/loadavg at start: {loadavg()}")
    nano = None if args.only_4b else nano_speedup(args.rounds, args.tasks)
    if not args.skip_4b:
        if not Path(args.checkpoint, "config.json").is_file():
            raise SystemExit(
                f"{args.checkpoint} missing: run benchmarks/make_4b_checkpoint.py {args.checkpoint}"
            )
        checkpoint = str(truncated(Path(args.checkpoint), args.layers))
        for weights in args.weights:
            quant = QUANTIZATION[weights]
            ratios = verify_costs(checkpoint, quant, list(range(2, 9)), args.rounds * 2, args.context)
            gc.collect()  # the previous engine's weights go before the next loads
            if nano is not None:
                projection(nano, ratios, quant or "bf16")
            gc.collect()
            batch_costs(checkpoint, quant, args.rounds, args.batch_context, NGRAM["num_speculative_tokens"])
            gc.collect()
    if not args.only_4b:
        batch16(args.rounds)
    print(f"/proc/loadavg at end: {loadavg()}")


if __name__ == "__main__":
    main()
