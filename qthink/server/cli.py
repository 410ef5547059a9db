"""`qthink serve [MODEL]`: the OpenAI-compatible server (a drop-in for `vllm serve`)."""

import argparse
import logging

from qthink.chat_cli import add_model_arguments, model_and_engine_kwargs
from qthink.engine.async_engine import AsyncEngine
from qthink.server.app import build_app
from qthink.server.listeners import serve
from qthink.server.thinking_budget import EffortBudgets

log = logging.getLogger("qthink")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model_path",
        nargs="?",
        metavar="MODEL",
        help="model folder or Hugging Face id (default: the offline demo model)",
    )
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", help="the name clients send as `model`")
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` on every route but /health")
    p.add_argument("--metrics-public", action="store_true", help="serve /metrics without the API key")
    p.add_argument("--allowed-origins", nargs="*", help="enable CORS for these origins (off by default)")
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--reasoning-parser",
        choices=["qwen3", "deepseek_r1"],
        default="qwen3",
        help="accepted for vLLM compatibility; reasoning is always split at </think>",
    )
    p.add_argument("--no-web-ui", action="store_true", help="do not serve the chat page at /")
    p.add_argument(
        "--ollama-port",
        type=int,
        help="also listen on this port (Ollama clients look at 11434); every route is on both",
    )
    p.add_argument(
        "--reasoning-effort-budgets",
        help="thinking tokens per reasoning effort level, e.g. low=1024,medium=8192,high=unlimited "
        "(defaults: minimal=256, low=1024, medium=8192, high and xhigh unlimited; none is always 0)",
    )


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    model, kwargs = model_and_engine_kwargs(args, args.model_path)
    engine = AsyncEngine(model, **kwargs)
    # Clients name the model they want: the demo model's cache path makes a poor name.
    demo_name = "qthink-nano" if "/nano/" in model else "qthink-demo"
    name = args.served_model_name or args.model_path or args.model or demo_name
    app = build_app(
        engine,
        name,
        api_key=args.api_key,
        metrics_public=args.metrics_public,
        allowed_origins=args.allowed_origins,
        web_ui=not args.no_web_ui,
        efforts=EffortBudgets.parse(args.reasoning_effort_budgets),
    )
    core = engine.engine
    blocks, size = core.blocks.num_blocks, core.config.block_size
    log.info(
        "qthink serving %s as %r: dtype %s%s, %d KV blocks x %d tokens, max_model_len %d, "
        "at http://%s:%d/v1 (chat page at http://%s:%d/)",
        model,
        name,
        str(core.dtype).removeprefix("torch."),
        f", {args.quantization} weights" if args.quantization else "",
        blocks,
        size,
        core.max_model_len,
        args.host,
        args.port,
        args.host,
        args.port,
    )
    serve(app, args.host, [args.port] + ([args.ollama_port] if args.ollama_port else []))
    return 0
