"""qthink-nano's quality bar on held-out problems (greedy, qthink's engine), bf16 and quantized;
a quantized run also prints how far its arithmetic accuracy moved from bf16's (at most 2 points).

python benchmarks/nano_quality.py [-n 200] [--weights bf16 int8 int4]
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
    ap.add_argument("--weights", nargs="+", default=["bf16"], choices=["bf16", "int8", "int4"])
    args = ap.parse_args()
    path = ensure_nano()
    reference = None
    for weights in args.weights:
        scores = evaluate(path, args.n, None if weights == "bf16" else weights)
        print(f"weights: {weights}")
        arithmetic = scores["arithmetic_boxed_correct"]
        if weights == "bf16":
            reference = arithmetic
        elif reference is not None:
            moved = 100 * abs(arithmetic - reference)
            print(f"  arithmetic moved {moved:.1f} points from bf16 ({'within' if moved <= 2 else 'OVER'} 2)")
        for name, value in scores.items():
            bar = BAR.get(name)
            verdict = "" if bar is None else ("meets" if value >= bar else "BELOW") + f" the bar of {bar:.0%}"
            print(f"  {name:30s} {value:7.1%}  {verdict}")
        print(json.dumps(scores))


if __name__ == "__main__":
    main()
