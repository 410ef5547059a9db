"""How far int8 and int4 weights move the next-token distribution from bf16: top-1 agreement and
mean KL(bf16 || quantized) over every position of a fixed prompt set.

    python benchmarks/bench_quant_quality.py                       # qthink-nano, held-out transcripts
    python benchmarks/bench_quant_quality.py /data/qwen3-4b-random  # any checkpoint, seeded random ids

qthink-nano's prompts are whole held-out conversations (thinking and answer included), so every
position where the model was trained to predict is scored; other checkpoints get seeded random
token ids. Each format is scored twice: through the GEMV kernels that decoding uses (activations
rounded to int8 per group of 128) and through the dequantize-then-GEMM path of prefill. The
effect on qthink-nano's held-out accuracy is `benchmarks/nano_quality.py --weights bf16 int8 int4`.
"""

import argparse
import gc
import random
from pathlib import Path

import torch

from qthink.loader import load_model
from qthink.model import quant

NANO_SEED = 2_000_003


def nano_prompts(count: int) -> list[list[int]]:
    from qthink.nano.data import conversation, render
    from qthink.random_checkpoint import tokenizer_files_dir
    from qthink.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(tokenizer_files_dir(), chat_template="thinking-2507")
    rng = random.Random(NANO_SEED)
    return [render(tokenizer, *conversation(rng))[0] for _ in range(count)]


def random_prompts(count: int, length: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(1000, 100_000, (length,), generator=gen).tolist() for _ in range(count)]


@torch.inference_mode()
def log_probs(model, prompts: list[list[int]], decode_path: bool = False) -> list[torch.Tensor]:
    """float32 log-probabilities at every position of every prompt; `decode_path` sends every
    quantized matmul through the small-batch GEMV kernels, whatever its row count."""
    small_m = quant.SMALL_M
    quant.SMALL_M = 1 << 30 if decode_path else small_m
    try:
        out = []
        for ids in prompts:
            logits = model(torch.tensor([ids]), torch.arange(len(ids))[None])[0]
            out.append(torch.log_softmax(logits.float(), dim=-1))
    finally:
        quant.SMALL_M = small_m
    return out


def compare(reference: list[torch.Tensor], other: list[torch.Tensor]) -> dict[str, float]:
    ref, got = torch.cat(reference), torch.cat(other)
    kl = (ref.exp() * (ref - got)).sum(-1)
    return {
        "top1_agreement": (ref.argmax(-1) == got.argmax(-1)).float().mean().item(),
        "mean_kl": kl.mean().item(),
        "max_kl": kl.max().item(),
        "positions": ref.shape[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="a checkpoint folder (default: qthink-nano)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--length", type=int, default=128, help="tokens per random prompt")
    args = ap.parse_args()
    if args.model:
        model_dir, prompts = Path(args.model), random_prompts(args.prompts, args.length)
    else:
        from qthink.nano import ensure_nano

        model_dir, prompts = ensure_nano(), nano_prompts(args.prompts)
    reference = log_probs(load_model(model_dir, "bfloat16"), prompts)
    print(f"{model_dir.name}: {sum(map(len, prompts))} positions, reference bf16")
    print(f"{'weights':22s} {'top-1 agreement':>16s} {'mean KL':>10s} {'max KL':>10s}")
    for quantization in ("int8", "int4"):
        model = load_model(model_dir, "bfloat16", quantization=quantization)
        for path, decode_path in (("decode (GEMV)", True), ("prefill (GEMM)", False)):
            scores = compare(reference, log_probs(model, prompts, decode_path))
            agreement, mean_kl, max_kl = scores["top1_agreement"], scores["mean_kl"], scores["max_kl"]
            print(
                f"{quantization + ' ' + path:22s} {agreement:16.4f} {mean_kl:10.5f} {max_kl:10.4f}",
                flush=True,
            )
        del model
        gc.collect()


if __name__ == "__main__":
    main()
