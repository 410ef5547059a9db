"""qthink-nano's quality bar on held-out problems (greedy, qthink's engine), bf16 and quantized.

python benchmarks/nano_quality.py [-n 200]
"""

import argparse
import json

from qthink.nano import ensure_nano
from qthink.nano.evaluate import evaluate

BAR = {
    "arithmetic_boxed_correct": 0.9,
    "tool_call_correct": 0.9,
    "answer_uses_tool_result": 0.9,
    "think_end_produced": 0.99,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--quantization", nargs="*", default=[None])
    args = ap.parse_args()
    path = ensure_nano()
    for q in args.quantization:
        scores = evaluate(path, args.n, q)
        print(f"weights: {q or 'bf16'}")
        for name, value in scores.items():
            bar = BAR.get(name)
            verdict = "" if bar is None else ("meets" if value >= bar else "BELOW") + f" the bar of {bar:.0%}"
            print(f"  {name:30s} {value:7.1%}  {verdict}")
        print(json.dumps(scores))


if __name__ == "__main__":
    main()
