"""The performance goals on the real Qwen3-4B shape, each as a ratio measured in this one run:
qthink (bf16, int8, int4) against llama.cpp (BF16, Q8_0, Q4_K_M) and HF transformers (bf16).

    python benchmarks/make_4b_checkpoint.py /data/qwen3-4b-random          # once, ~8 GB, outside git
    python benchmarks/make_llama_cpp.py /data/qwen3-4b-random /data/llama   # once: tools and GGUF files
    python benchmarks/bench_decode.py /data/qwen3-4b-random --llama /data/llama [--rounds 3] [--busy]
        [--weights bf16 int8 int4] [--decode-only | --prefill-only | --depth 4096]

Goal figures need a quiet machine: the script refuses to print a goal table when the 1-minute
load average is over 0.5 before it starts or the hypervisor's CPU steal climbs (/proc/stat),
and records /proc/loadavg before and after. qthink and llama.cpp run interleaved, one round of
each after the other, for `--rounds` rounds; figures are the median and the spread (min-max),
ratios are per round. `--busy` measures decode@1 only, each round once on the quiet machine and
once beside one competing CPU-bound process that the script starts, and prints each engine's
slowdown. Decode: prompt 128 tokens, 64 forced output tokens. Prefill: one 2,048-token prompt
(bf16 against llama.cpp; int8 and int4 against qthink's bf16).
Throughput: 16 concurrent requests (qthink's continuous batching; llama-batched-bench -npl 16).
`--depth N`: decode@1 alone, after N tokens of context (a long thinking trace): qthink's prompt
of N tokens, llama-bench's `-d N`. The whole table takes about 40 minutes on 2 cores;
`--decode-only` (decode@1 of the chosen `--weights`) about 3-4 minutes a format, `--busy` about
7 minutes a format.
"""

import argparse
import gc
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from qthink.bench_cli import measure
from qthink.config import ModelConfig
from qthink.engine.engine import LLMEngine
from qthink.memory import kv_bytes_per_token
from qthink.plan_cli import Format, GiB, plan

PROMPT, OUTPUT, PREFILL, BATCH, THREADS = 128, 64, 2048, 16, 2
WEIGHTS = {"bf16": ("BF16", None), "int8": ("Q8_0", "int8"), "int4": ("Q4_K_M", "int4")}
QUIET_LOAD = 0.5  # 1-minute load average above which the machine is not quiet
STEAL_LIMIT = 0.02  # share of CPU time the hypervisor may take (steal) before figures are void


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[7], sum(fields[:8])


def steal_share(since: tuple[int, int]) -> float:
    steal, total = cpu_ticks()
    return (steal - since[0]) / max(1, total - since[1])


def busy_reason() -> str | None:
    """Why the machine is not quiet enough for goal figures, or None."""
    load = float(loadavg().split()[0])
    if load > QUIET_LOAD:
        return f"1-minute load average {load:.2f} > {QUIET_LOAD}"
    start = cpu_ticks()
    time.sleep(2)
    if (share := steal_share(start)) > STEAL_LIMIT:
        return f"CPU steal at {share:.1%} of CPU time over 2 s"
    return None


class Competitor:
    """One CPU-bound process for the duration of a `with` block (the busy-machine case)."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} ({min(values):.2f}-{max(values):.2f})"


def qthink_engine(model: str, quantization: str | None, max_len: int, kv_memory: int = 3 << 30) -> LLMEngine:
    return LLMEngine(
        model,
        dtype="bfloat16",
        quantization=quantization,
        max_model_len=max_len,
        max_num_seqs=BATCH,
        max_num_batched_tokens=PREFILL,
        kv_cache_memory=kv_memory,
        enable_prefix_caching=False,
    )


def llama_files(model: str, weights: str, llama: Path) -> tuple[Path, Path]:
    tools = next(llama.glob("llama_cpp_python-*/vendor/llama.cpp/build/bin"))
    return tools, llama / f"{Path(model).name}-{WEIGHTS[weights][0].lower()}.gguf"


def rounds_of(rounds: int, runs: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Each run once per round, in order, for `rounds` rounds: {name: [one figure per round]}."""
    figures: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name, run in runs.items():
            figures[name].append(run())
        print(f"  round {r + 1}: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in figures.items()), flush=True)
    return figures


def paired_rows(model: str, weights: str, llama: Path, rounds: int, only: str | None) -> tuple[dict, dict]:
    """qthink and llama.cpp on one weight format, interleaved round by round; `only` "decode"
    (decode@1) or "prefill" cuts the rest."""
    tools, gguf = llama_files(model, weights, llama)
    engine = qthink_engine(model, WEIGHTS[weights][1], PREFILL + 16)
    measure(engine, 16, 4, 1)  # warm-up: first-touch of the KV cache, one-off set-up
    q: dict[str, list[float]] = {}
    ll: dict[str, list[float]] = {}
    if only != "prefill":
        q, ll = decode_rows(engine, tools, gguf, weights, rounds, only == "decode")
    if only != "decode":
        prefill_rows(engine, tools, gguf, weights, rounds, q, ll)
    return q, ll  # the engine goes with this frame


def decode_rows(engine, tools: Path, gguf: Path, weights: str, rounds: int, one_only: bool) -> tuple:
    """decode@1 and decode@16 of both engines (decode@1 alone if one_only)."""
    print(f"{weights}: decode@1, tok/s", flush=True)
    runs = {
        "qthink": lambda: measure(engine, PROMPT, OUTPUT, 1)["decode_tok_s"],
        "llama.cpp": lambda: llama_bench(tools, gguf, 0, OUTPUT),
    }
    one = rounds_of(rounds, runs)
    if one_only:
        return {"decode@1": one["qthink"]}, {"decode@1": one["llama.cpp"]}
    print(f"{weights}: decode@{BATCH}, tok/s", flush=True)
    runs = {
        "qthink": lambda: measure(engine, PROMPT, OUTPUT, BATCH)["decode_tok_s"],
        "llama.cpp": lambda: llama_batched(tools, gguf),
    }
    many = rounds_of(rounds, runs)
    q = {"decode@1": one["qthink"], f"decode@{BATCH}": many["qthink"]}
    ll = {"decode@1": one["llama.cpp"], f"decode@{BATCH}": many["llama.cpp"]}
    return q, ll


def prefill_rows(engine, tools: Path, gguf: Path, weights: str, rounds: int, q: dict, ll: dict) -> None:
    """Prefill of 2,048 tokens into q (and llama.cpp's into ll for bf16)."""
    print(f"{weights}: prefill {PREFILL}, tok/s", flush=True)
    runs = {"qthink": lambda: measure(engine, PREFILL, 2, 1)["prefill_tok_s"]}
    if weights == "bf16":  # quantized prefill is compared with qthink's bf16 prefill
        runs["llama.cpp"] = lambda: llama_bench(tools, gguf, PREFILL, 0)
    prefill = rounds_of(rounds, runs)
    q["prefill@2048"] = prefill["qthink"]
    if weights == "bf16":
        ll["prefill@2048"] = prefill["llama.cpp"]


def busy_rows(model: str, weights: str, llama: Path, rounds: int) -> dict[str, list[float]]:
    """decode@1 of both engines, each round quiet and then beside one competing process."""
    tools, gguf = llama_files(model, weights, llama)
    engine = qthink_engine(model, WEIGHTS[weights][1], PROMPT + OUTPUT + 16, 256 << 20)
    measure(engine, 16, 4, 1)

    def busy(run: Callable[[], float]) -> Callable[[], float]:
        def beside_competitor() -> float:
            with Competitor():
                return run()

        return beside_competitor

    ours = lambda: measure(engine, PROMPT, OUTPUT, 1)["decode_tok_s"]
    theirs = lambda: llama_bench(tools, gguf, 0, OUTPUT)
    print(f"{weights}: decode@1, tok/s, quiet and busy", flush=True)
    runs = {"qthink": ours, "llama.cpp": theirs, "qthink busy": busy(ours), "llama.cpp busy": busy(theirs)}
    return rounds_of(rounds, runs)  # the engine goes with this frame


def qthink_ttft(model: str, tokens: int) -> float:
    """Seconds to the first token of one `tokens`-long prompt, prefilled in chunks of 2,048."""
    kv_memory = kv_bytes_per_token(ModelConfig.from_pretrained(Path(model)), "bfloat16") * (tokens + 256)
    engine = qthink_engine(model, "int4", tokens + 16, kv_memory)
    start = time.perf_counter()
    measure(engine, tokens, 1, 1)
    seconds = time.perf_counter() - start
    del engine
    gc.collect()
    return seconds


@torch.inference_mode()
def hf_decode(model: str) -> float:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).eval()
    ids = torch.randint(1000, 100_000, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    hf.generate(ids[:, :16], max_new_tokens=4, do_sample=False)  # warm-up
    start = time.perf_counter()
    hf(ids)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    hf.generate(ids, max_new_tokens=OUTPUT, min_new_tokens=OUTPUT, do_sample=False)
    rate = (OUTPUT - 1) / (time.perf_counter() - start - prefill)
    del hf
    gc.collect()
    return rate


def llama_bench(tools: Path, gguf: Path, prompt: int, output: int, depth: int = 0) -> float:
    """llama-bench's tok/s for a `prompt`-token prefill or an `output`-token decode, after
    `depth` tokens already in the cache."""
    cmd = [
        tools / "llama-bench",
        "-m",
        gguf,
        "-p",
        prompt,
        "-n",
        output,
        "-d",
        depth,
        "-t",
        THREADS,
        "-r",
        1,
        "-o",
        "json",
    ]
    return json.loads(run_tool(cmd))[0]["avg_ts"]


def llama_batched(tools: Path, gguf: Path) -> float:
    """llama-batched-bench's aggregate decode tok/s with BATCH parallel sequences."""
    cmd = [tools / "llama-batched-bench", "-m", gguf, "-c", BATCH * (PROMPT + OUTPUT) + 64]
    cmd += ["-b", 2048, "-ub", 512, "-npp", PROMPT, "-ntg", OUTPUT, "-npl", BATCH, "-t", THREADS]
    return json.loads(run_tool(cmd + ["--output-format", "jsonl"]).strip().splitlines()[-1])["speed_tg"]


def run_tool(cmd: list) -> str:
    return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, check=True).stdout


def goal(name: str, ours: list[float], reference: list[float], target: float) -> str:
    ratios = [a / b for a, b in zip(ours, reference)]
    verdict = "met" if statistics.median(ratios) >= target else "NOT met"
    return f"{name:42s} {spread(ours)} {spread(reference)} {spread(ratios)}x  >= {target:.1f}x {verdict}"


def memory_goal(model: str) -> str:
    budget = plan(ModelConfig.from_pretrained(Path(model)), 262_144, 1, Format("bfloat16", "int4", "int8"))
    fits = budget["total"] <= 24 * GiB
    parts = " + ".join(f"{budget[k] / GiB:.2f}" for k in ("weights", "kv_cache", "overhead"))
    return (
        f"memory: 262,144 tokens, int4 weights + int8 KV: {parts} GiB = {budget['total'] / GiB:.2f} GiB"
        f"   <= 24 GiB  {'met' if fits else 'NOT met'}"
    )


def header() -> str:
    columns = ("qthink median (min-max)", "other median (min-max)", "ratio median (min-max)")
    return f"\n{'goal':42s} " + " ".join(f"{c:>22s}" for c in columns) + "   target"


def goal_table(model: str, llama: Path, rounds: int, weights: list[str], only: str | None) -> list[str]:
    q, ll = {}, {}
    for w in weights:
        q[w], ll[w] = paired_rows(model, w, llama, rounds, only)
        gc.collect()
    rows = [header()]
    if only == "prefill":
        return rows + prefill_goals(q, ll, weights)
    for w in weights:
        rows.append(
            goal(f"decode@1 {w} vs llama.cpp {WEIGHTS[w][0]}", q[w]["decode@1"], ll[w]["decode@1"], 1.0)
        )
    if only == "decode":
        return rows
    if "bf16" in weights:
        hf = [hf_decode(model)]
        print(f"transformers bf16 decode@1 {hf[0]:.2f}", flush=True)
        rows.append(goal("decode@1 bf16 vs transformers bf16", q["bf16"]["decode@1"], hf * rounds, 3.0))
    b = f"decode@{BATCH}"
    for w in weights:
        rows.append(goal(f"{b} {w} vs llama.cpp {WEIGHTS[w][0]} -npl {BATCH}", q[w][b], ll[w][b], 2.0))
    for w in weights:
        rows.append(goal(f"{b} {w} vs qthink {w} decode@1", q[w][b], q[w]["decode@1"], 6.0))
    return rows + prefill_goals(q, ll, weights)


def prefill_goals(q: dict, ll: dict, weights: list[str]) -> list[str]:
    """bf16 prefill against llama.cpp's, int8/int4 against bf16 (when bf16 ran)."""
    if "bf16" not in weights:
        return []
    p = "prefill@2048"
    rows = [goal("prefill 2048 bf16 vs llama.cpp BF16", q["bf16"][p], ll["bf16"][p], 1.1)]
    for w in weights:
        if w != "bf16":
            rows.append(goal(f"prefill 2048 {w} vs qthink bf16", q[w][p], q["bf16"][p], 1.0))
    return rows


def depth_rows(model: str, weights: str, llama: Path, rounds: int, depth: int) -> dict[str, list[float]]:
    """decode@1 after `depth` tokens of context (a long thinking trace), both engines interleaved."""
    tools, gguf = llama_files(model, weights, llama)
    engine = qthink_engine(model, WEIGHTS[weights][1], depth + OUTPUT + 16)
    measure(engine, 16, 4, 1)  # warm-up
    print(f"{weights}: decode@1 after {depth} tokens of context, tok/s", flush=True)
    runs = {
        "qthink": lambda: measure(engine, depth, OUTPUT, 1)["decode_tok_s"],
        "llama.cpp": lambda: llama_bench(tools, gguf, 0, OUTPUT, depth),
    }
    return rounds_of(rounds, runs)  # the engine goes with this frame


def depth_table(model: str, llama: Path, rounds: int, weights: list[str], depth: int) -> list[str]:
    rows = [header()]
    for w in weights:
        got = depth_rows(model, w, llama, rounds, depth)
        gc.collect()
        label = f"decode@1 at depth {depth} {w} vs llama.cpp {WEIGHTS[w][0]}"
        rows.append(goal(label, got["qthink"], got["llama.cpp"], 1.0))
    return rows


def busy_table(model: str, llama: Path, rounds: int, weights: list[str]) -> list[str]:
    """Slowdown (quiet / busy decode@1) of each engine; the goal: qthink's no worse."""
    rows = [
        f"\n{'decode@1 beside one busy process':42s} {'qthink slowdown':>22s} {'llama.cpp slowdown':>22s}"
    ]
    for w in weights:
        label = WEIGHTS[w][0]
        f = busy_rows(model, w, llama, rounds)
        gc.collect()
        ours = [a / b for a, b in zip(f["qthink"], f["qthink busy"])]
        theirs = [a / b for a, b in zip(f["llama.cpp"], f["llama.cpp busy"])]
        verdict = "met" if statistics.median(ours) <= statistics.median(theirs) else "NOT met"
        rows.append(
            f"{w + ' vs ' + label:42s} {spread(ours)}x {spread(theirs)}x  qthink <= llama.cpp {verdict}"
        )
    return rows


def only_part(args: argparse.Namespace) -> str | None:
    return "decode" if args.decode_only else "prefill" if args.prefill_only else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--llama", type=Path, help="the folder make_llama_cpp.py wrote (else: no goal table)")
    ap.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of each comparison (at least 3)"
    )
    ap.add_argument("--busy", action="store_true", help="decode@1 quiet and beside one CPU-bound process")
    ap.add_argument("--force", action="store_true", help="measure on a busy machine (figures, no goal table)")
    ap.add_argument(
        "--weights", nargs="+", choices=list(WEIGHTS), default=list(WEIGHTS), help="formats to compare"
    )
    only = ap.add_mutually_exclusive_group()
    only.add_argument(
        "--decode-only", action="store_true", help="decode@1 only: no batch, prefill or transformers"
    )
    only.add_argument("--prefill-only", action="store_true", help="prefill 2,048 only")
    ap.add_argument("--ttft", type=int, nargs="*", default=[], help="prompt lengths for time to first token")
    ap.add_argument(
        "--depth", type=int, help="decode@1 only, after this many tokens of context (llama-bench -d)"
    )
    args = ap.parse_args()
    if args.rounds < 3:
        ap.error("--rounds must be at least 3")
    torch.set_num_threads(THREADS)
    before = loadavg()
    print(f"/proc/loadavg before: {before}", flush=True)
    reason = busy_reason()
    if reason and not args.force:
        sys.exit(f"the machine is busy ({reason}): no goal figures; wait for a quiet machine or use --force")
    steal_start = cpu_ticks()
    rows = []
    if args.llama:
        if args.busy:
            rows = busy_table(args.model, args.llama, args.rounds, args.weights)
        elif args.depth:
            rows = depth_table(args.model, args.llama, args.rounds, args.weights, args.depth)
        else:
            rows = goal_table(args.model, args.llama, args.rounds, args.weights, only_part(args))
    rows.append(memory_goal(args.model))
    for tokens in args.ttft:
        seconds = qthink_ttft(args.model, tokens)
        rows.append(
            f"time to first token, {tokens:,}-token prompt, int4, chunks of {PREFILL}: {seconds:.1f} s"
        )
    steal = steal_share(steal_start)
    print(f"/proc/loadavg after: {loadavg()}; CPU steal during the run {steal:.1%}")
    if reason or steal > STEAL_LIMIT:
        why = reason or f"CPU steal {steal:.1%} during the run"
        print(f"\nNOT a goal table: the machine was busy ({why}); figures of this run only, no verdicts")
        rows = [re.sub(r"\s+(NOT )?met$", "", row) for row in rows]
    print("\n".join(rows))
    print(
        f"\nall figures tok/s with {THREADS} threads; quality of int8/int4: benchmarks/bench_quant_quality.py"
    )


if __name__ == "__main__":
    main()
