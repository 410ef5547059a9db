"""`qthink eval run TASK... --base-url URL` and `qthink eval compare a.json b.json`."""

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from qthink.eval.report import compare, markdown, summarize, write_reports
from qthink.eval.tasks import TaskError, examples, load_task


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="eval_command", metavar="SUBCOMMAND", required=True)
    run_p = sub.add_parser("run", help="ask an endpoint every item of the tasks and score the answers")
    run_p.add_argument(
        "tasks",
        nargs="+",
        metavar="TASK",
        help=f"a .jsonl file, an example set ({', '.join(examples())}), bfcl:CATEGORY or hf:NAME",
    )
    run_p.add_argument(
        "--base-url",
        action="append",
        dest="base_urls",
        help="OpenAI-compatible endpoint; repeat it to spread the load (default http://127.0.0.1:8000/v1)",
    )
    run_p.add_argument("--model", help="model name to request (default: the endpoint's first model)")
    run_p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "EMPTY"))
    run_p.add_argument("--samples", type=int, default=1, help="answers per item: avg@k, pass@k, maj@k")
    run_p.add_argument("--concurrency", type=int, default=32, help="requests in flight at once")
    run_p.add_argument("--temperature", type=float, default=0.6)
    run_p.add_argument("--top-p", type=float, default=0.95)
    run_p.add_argument("--top-k", type=int, default=20)
    run_p.add_argument("--max-tokens", type=int, help="default 32,768; 81,920 for math and code")
    run_p.add_argument("--seed", type=int, default=0, help="sampling seeds and choice shuffling")
    run_p.add_argument("--limit", type=int, help="only the first N items of each task")
    run_p.add_argument("--timeout", type=float, default=3600.0, help="seconds per request")
    run_p.add_argument("--retries", type=int, default=5, help="retries of 5xx answers and timeouts")
    run_p.add_argument("--extra-body", type=json.loads, default={}, help="JSON merged into each request")
    run_p.add_argument(
        "--output",
        type=Path,
        default=Path("qthink-eval.jsonl"),
        help="samples, appended as they finish; run again to resume (reports go next to it)",
    )
    run_p.add_argument("--no-progress", action="store_true")
    run_p.set_defaults(eval_run=run_eval)
    cmp_p = sub.add_parser("compare", help="two runs' JSON reports side by side")
    cmp_p.add_argument("a", type=Path)
    cmp_p.add_argument("b", type=Path)
    cmp_p.set_defaults(eval_run=run_compare)


def run(args) -> int:
    return args.eval_run(args)


def _config(args):
    from qthink.eval.runner import RunConfig

    return RunConfig(
        base_urls=args.base_urls or ["http://127.0.0.1:8000/v1"],
        output=args.output,
        model=args.model,
        api_key=args.api_key,
        samples=args.samples,
        concurrency=args.concurrency,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        seed=args.seed,
        timeout=args.timeout,
        retries=args.retries,
        extra_body=args.extra_body,
        progress=not args.no_progress,
    )


def run_eval(args) -> int:
    try:
        task_list = [load_task(source) for source in args.tasks]
    except (TaskError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"qthink eval: {e}", file=sys.stderr)
        return 2
    for task in task_list:
        task.items = task.items[: args.limit] if args.limit else task.items
    import openai

    from qthink.eval.runner import OutputInUse, run_tasks

    config = _config(args)
    try:
        records = asyncio.run(run_tasks(task_list, config))
    except openai.OpenAIError as e:  # e.g. no server at the URL when asking for its model name
        print(f"qthink eval: {', '.join(config.base_urls)}: {e}", file=sys.stderr)
        return 1
    except OutputInUse as e:
        print(f"qthink eval: {e}", file=sys.stderr)
        return 2
    shown = {k: v for k, v in vars(config).items() if k not in ("api_key", "progress")}
    summary = summarize(task_list, records, {**shown, "output": str(config.output)})
    paths = write_reports(summary, records, config.output.with_suffix(""))
    print(markdown(summary))
    print("reports: " + ", ".join(map(str, paths)))
    return 0


def run_compare(args) -> int:
    a, b = (json.loads(p.read_text()) for p in (args.a, args.b))
    print(compare(a, b, args.a.stem, args.b.stem))
    return 0
