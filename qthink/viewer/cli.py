"""`qthink view TRACE.json [TRACE2.json]`: open saved thinking traces in the browser viewer."""

import argparse
import json
import sys

from qthink.viewer.trace import TraceError, load_trace, trace_schema


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "traces",
        nargs="*",
        metavar="TRACE.json",
        help="one trace to view, or two of the same question to compare",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8800)
    parser.add_argument(
        "--schema", action="store_true", help="print the JSON Schema of a trace file and exit"
    )


def run(args: argparse.Namespace) -> int:
    if args.schema:
        print(json.dumps(trace_schema(), indent=2))
        return 0
    if len(args.traces) > 2:
        print("qthink view: give one trace, or two to compare", file=sys.stderr)
        return 2
    try:
        traces = [load_trace(path) for path in args.traces]
    except TraceError as e:
        print(f"qthink view: {e}", file=sys.stderr)
        return 1
    import uvicorn

    from qthink.viewer.web import view_app

    print(f"qthink viewer on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(view_app(traces), host=args.host, port=args.port, log_level="warning")
    return 0
