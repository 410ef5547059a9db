"""Issue-6 table on the real Qwen3-4B shape: qthink (bf16, int8, int4) against HF transformers (bf16)
and, when given a llama-bench binary and GGUF files, llama.cpp — all in one run, as ratios.

    python benchmarks/make_4b_checkpoint.py /data/qwen3-4b-random     # once, ~8 GB, outside git
    python benchmarks/bench_decode.py /data/qwen3-4b-random [--engines qthink-bf16 qthink-int4 hf-bf16]
        [--llama-bench PATH --gguf BF16=/data/bf16.gguf Q8_0=/data/q8.gguf Q4_K_M=/data/q4.gguf]

Prompt 128 tokens, 64 forced output tokens, batch 1 and 8 (and 16 for qthink), 2 threads.
"""

import argparse
import gc
import subprocess
import time

import torch

from qthink.bench_cli import measure
from qthink.engine.engine import LLMEngine


def qthink_row(model: str, quantization: str | None, args) -> dict:
    engine = LLMEngine(
        model,
        dtype="bfloat16",
        quantization=quantization,
        max_model_len=args.prompt_len + args.output_len + 16,
        max_num_seqs=max(args.batch),
        max_num_batched_tokens=args.prompt_len * max(args.batch),
        kv_cache_memory=2 << 30,
        enable_prefix_caching=False,
    )
    measure(engine, 16, 4, 1)  # warm-up
    rows = {b: measure(engine, args.prompt_len, args.output_len, b) for b in args.batch}
    return {
        "prefill": rows[1]["prefill_tok_s"],
        **{f"decode@{b}": r["decode_tok_s"] for b, r in rows.items()},
    }


def hf_row(model: str, args) -> dict:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).eval()
    gen = torch.Generator().manual_seed(0)
    out = {}
    with torch.inference_mode():
        hf.generate(torch.randint(1000, 100_000, (1, 16)), max_new_tokens=4, do_sample=False)  # warm-up
        for b in args.batch:
            if b > 8:
                continue
            ids = torch.randint(1000, 100_000, (b, args.prompt_len), generator=gen)
            start = time.perf_counter()
            hf(ids)
            prefill = time.perf_counter() - start
            start = time.perf_counter()
            hf.generate(ids, max_new_tokens=args.output_len, min_new_tokens=args.output_len, do_sample=False)
            total = time.perf_counter() - start
            if b == 1:
                out["prefill"] = args.prompt_len / prefill
            out[f"decode@{b}"] = b * (args.output_len - 1) / max(total - prefill, 1e-9)
    return out


def llama_row(binary: str, gguf: str, args) -> dict:
    run = subprocess.run(
        [
            binary,
            "-m",
            gguf,
            "-p",
            str(args.prompt_len),
            "-n",
            str(args.output_len),
            "-t",
            "2",
            "-r",
            "2",
            "-o",
            "csv",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rates = [float(line.split(",")[-2].strip('"')) for line in run.stdout.splitlines()[1:] if line]
    return {"prefill": rates[0], "decode@1": rates[1]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--engines", nargs="+", default=["qthink-bf16", "qthink-int8", "qthink-int4", "hf-bf16"])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--llama-bench")
    ap.add_argument("--gguf", nargs="*", default=[], help="NAME=PATH, e.g. Q8_0=/data/q8.gguf")
    args = ap.parse_args()
    torch.set_num_threads(2)
    table = {}
    for name in args.engines:
        if name.startswith("qthink-"):
            q = name.removeprefix("qthink-")
            table[name] = qthink_row(args.model, None if q == "bf16" else q, args)
        elif name == "hf-bf16":
            table[name] = hf_row(args.model, args)
        print(name, {k: round(v, 2) for k, v in table[name].items()}, flush=True)
        gc.collect()  # free one engine's weights before the next loads
    for spec in args.gguf if args.llama_bench else []:
        label, path = spec.split("=", 1)
        table[f"llama.cpp-{label}"] = llama_row(args.llama_bench, path, args)
    base = table.get("hf-bf16", {})
    columns = ["prefill"] + [f"decode@{b}" for b in args.batch]
    print(f"\n{'engine':18s}" + "".join(f"{c:>16s}" for c in columns))
    for name, row in table.items():
        cells = []
        for c in columns:
            v = row.get(c)
            ratio = f" ({v / base[c]:.1f}x)" if v and base.get(c) and name != "hf-bf16" else ""
            cells.append(f"{v:8.2f}{ratio}" if v else "-")
        print(f"{name:18s}" + "".join(f"{cell:>16s}" for cell in cells))
    print("\nratios are against HF transformers bf16 measured in this run; tok/s, 2 threads")


if __name__ == "__main__":
    main()
