"""`qthink nano`: build qthink-nano into the cache (or retrain it), and measure its quality."""

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rebuild", action="store_true", help="retrain from the seeds (about two hours, one thread)"
    )
    p.add_argument("--eval", action="store_true", help="print the quality bar on held-out problems")
    p.add_argument("-n", type=int, default=100, help="held-out problems per task")
    p.add_argument("--quantization", choices=["int8", "int4"])


def run(args) -> int:
    from qthink.nano import ensure_nano
    from qthink.nano.build import ARTIFACT, digest

    shipped = digest(ARTIFACT) if ARTIFACT.is_file() else None
    path = ensure_nano(rebuild=args.rebuild)
    if args.rebuild:
        same = digest(ARTIFACT) == shipped
        print("the rebuild reproduces the shipped weights bit for bit" if same else "the rebuild differs")
    print(path)
    if args.eval:
        from qthink.nano.evaluate import evaluate

        print(json.dumps(evaluate(path, args.n, args.quantization, progress=True), indent=2))
    return 0
