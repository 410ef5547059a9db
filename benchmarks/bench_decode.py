"""The performance goals on the real Qwen3-4B shape, each as a ratio measured in this one run:
qthink (bf16, int8, int4) against llama.cpp (BF16, Q8_0, Q4_K_M) and HF transformers (bf16).

    python benchmarks/make_4b_checkpoint.py /data/qwen3-4b-random          # once, ~8 GB, outside git
    python benchmarks/make_llama_cpp.py /data/qwen3-4b-random /data/llama   # once: tools and GGUF files
    python benchmarks/bench_decode.py /data/qwen3-4b-random --llama /data/llama [--ttft 16384]

Decode: prompt 128 tokens, 64 forced output tokens, qthink and llama-bench interleaved twice, best
of each. Prefill: one 2,048-token prompt. Throughput: 16 concurrent requests (qthink's continuous
batching; llama-batched-bench -npl 16). 2 threads.
"""

import argparse
import gc
import json
import subprocess
import time
from pathlib import Path

import torch

from qthink.bench_cli import measure
from qthink.config import ModelConfig
from qthink.engine.engine import LLMEngine
from qthink.memory import kv_bytes_per_token
from qthink.plan_cli import GiB, plan

PROMPT, OUTPUT, PREFILL, BATCH, THREADS = 128, 64, 2048, 16, 2
WEIGHTS = {"bf16": ("BF16", None), "int8": ("Q8_0", "int8"), "int4": ("Q4_K_M", "int4")}


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


def paired_rows(model: str, weights: str, llama: Path) -> tuple[dict, dict]:
    """qthink and llama.cpp on one weight format, interleaved (qthink, llama.cpp, qthink,
    llama.cpp; best of each) so that the machine's bandwidth swings hit both alike."""
    label = WEIGHTS[weights][0]
    tools = next(llama.glob("llama_cpp_python-*/vendor/llama.cpp/build/bin"))
    gguf = llama / f"{Path(model).name}-{label.lower()}.gguf"
    engine = qthink_engine(model, WEIGHTS[weights][1], PREFILL + 16)
    measure(engine, 16, 4, 1)  # warm-up: kernel build, first-touch of the KV cache
    ours, theirs = [], []
    for _ in range(2):
        ours.append(measure(engine, PROMPT, OUTPUT, 1)["decode_tok_s"])
        theirs.append(llama_bench(tools, gguf, 0, OUTPUT)[0])
    q = {"decode@1": max(ours), f"decode@{BATCH}": measure(engine, PROMPT, OUTPUT, BATCH)["decode_tok_s"]}
    ll = {"decode@1": max(theirs), f"decode@{BATCH}": llama_batched(tools, gguf)}
    if weights == "bf16":
        q["prefill@2048"] = measure(engine, PREFILL, 2, 1)["prefill_tok_s"]
        ll["prefill@2048"] = llama_bench(tools, gguf, PREFILL, 0)[0]
    del engine
    gc.collect()
    for name, row in ((f"qthink {weights}", q), (f"llama.cpp {label}", ll)):
        print(name, {k: round(v, 2) for k, v in row.items()}, flush=True)
    return q, ll


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


def llama_bench(tools: Path, gguf: Path, prompt: int, output: int) -> list[float]:
    """llama-bench's tok/s for a `prompt`-token prefill and an `output`-token decode."""
    cmd = [
        tools / "llama-bench",
        "-m",
        gguf,
        "-p",
        prompt,
        "-n",
        output,
        "-t",
        THREADS,
        "-r",
        2,
        "-o",
        "json",
    ]
    return [run["avg_ts"] for run in json.loads(run_tool(cmd))]


def llama_batched(tools: Path, gguf: Path) -> float:
    """llama-batched-bench's aggregate decode tok/s with BATCH parallel sequences."""
    cmd = [tools / "llama-batched-bench", "-m", gguf, "-c", BATCH * (PROMPT + OUTPUT) + 64]
    cmd += ["-b", 2048, "-ub", 512, "-npp", PROMPT, "-ntg", OUTPUT, "-npl", BATCH, "-t", THREADS]
    return json.loads(run_tool(cmd + ["--output-format", "jsonl"]).strip().splitlines()[-1])["speed_tg"]


def run_tool(cmd: list) -> str:
    return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, check=True).stdout


def goal(name: str, ours: float, reference: float, target: float) -> str:
    ratio = ours / reference
    verdict = "met" if ratio >= target else "NOT met"
    return f"{name:44s} {ours:8.2f} {reference:8.2f} {ratio:7.2f}x   >= {target:.1f}x  {verdict}"


def memory_goal(model: str) -> str:
    budget = plan(ModelConfig.from_pretrained(Path(model)), 262_144, 1, "bfloat16", "int4", "int8")
    fits = budget["total"] <= 24 * GiB
    parts = " + ".join(f"{budget[k] / GiB:.2f}" for k in ("weights", "kv_cache", "overhead"))
    return (
        f"4 memory: 262,144 tokens, int4 weights + int8 KV: {parts} GiB = {budget['total'] / GiB:.2f} GiB"
        f"   <= 24 GiB  {'met' if fits else 'NOT met'}"
    )


def print_goals(model: str, llama: Path) -> None:
    q, ll = {}, {}
    for w, (label, _) in WEIGHTS.items():
        q[w], ll[label] = paired_rows(model, w, llama)
    hf = hf_decode(model)
    print(f"transformers bf16 decode@1 {hf:.2f}", flush=True)
    print(f"\n{'goal':44s} {'qthink':>8s} {'other':>8s} {'ratio':>8s}   target")
    for w, (label, _) in WEIGHTS.items():
        print(goal(f"1 decode@1 {w} vs llama.cpp {label}", q[w]["decode@1"], ll[label]["decode@1"], 1.0))
    print(goal("1 decode@1 bf16 vs transformers bf16", q["bf16"]["decode@1"], hf, 3.0))
    b = f"decode@{BATCH}"
    for w, (label, _) in WEIGHTS.items():
        print(goal(f"2 {b} {w} vs llama.cpp {label} -npl {BATCH}", q[w][b], ll[label][b], 2.0))
    for w in WEIGHTS:
        print(goal(f"2 {b} {w} vs qthink {w} decode@1", q[w][b], q[w]["decode@1"], 6.0))
    p = "prefill@2048"
    print(goal("3 prefill 2048 bf16 vs llama.cpp BF16", q["bf16"][p], ll["BF16"][p], 1.1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--llama", type=Path, help="the folder make_llama_cpp.py wrote (else: no goal table)")
    ap.add_argument("--ttft", type=int, nargs="*", default=[], help="prompt lengths for time to first token")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    if args.llama:
        print_goals(args.model, args.llama)
    print(memory_goal(args.model))
    for tokens in args.ttft:
        print(
            f"3 time to first token, {tokens:,}-token prompt, int4, chunks of {PREFILL}: "
            f"{qthink_ttft(args.model, tokens):.1f} s",
            flush=True,
        )
    print("\nall figures tok/s with 2 threads; quality of int8/int4: benchmarks/bench_quant_quality.py")


if __name__ == "__main__":
    main()
