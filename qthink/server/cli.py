"""`qthink serve [MODEL]`: the OpenAI-compatible server; `vllm serve` command lines run unchanged."""

import argparse
import logging
from pathlib import Path

from qthink.chat_cli import add_model_arguments, model_and_engine_kwargs
from qthink.engine.async_engine import AsyncEngine
from qthink.engine_flags import json_object
from qthink.server.app import MAX_REQUEST_BYTES, build_app
from qthink.server.listeners import serve
from qthink.server.streaming import STREAM_BACKLOG_TOKENS
from qthink.server.thinking_budget import EffortBudgets

log = logging.getLogger("qthink")

TOOL_CALL_PARSERS = ("hermes",)
UVICORN_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model_path",
        nargs="?",
        metavar="MODEL",
        help="model folder or Hugging Face id (default: the offline demo model)",
    )
    add_model_arguments(p)
    _add_server_arguments(p.add_argument_group("server"))
    _add_chat_arguments(p.add_argument_group("chat, reasoning and tools"))
    _add_accepted_arguments(p.add_argument_group("accepted for vLLM command lines (what qthink always does)"))


def _add_server_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    g.add_argument(
        "--served-model-name",
        nargs="+",
        metavar="NAME",
        help="the names clients may send as `model` (default: MODEL)",
    )
    g.add_argument("--api-key", help="require `Authorization: Bearer KEY` on every route but /health")
    g.add_argument("--metrics-public", action="store_true", help="serve /metrics without the API key")
    g.add_argument("--allowed-origins", nargs="*", help="enable CORS for these origins (off by default)")
    g.add_argument("--no-web-ui", action="store_true", help="do not serve the chat page at /")
    g.add_argument(
        "--ollama-port",
        type=int,
        help="also listen on this port (Ollama clients look at 11434); every route is on both",
    )
    g.add_argument(
        "--max-request-bytes",
        type=int,
        default=MAX_REQUEST_BYTES,
        metavar="N",
        help=f"refuse a larger request body with 413 (default: {MAX_REQUEST_BYTES} = 32 MiB)",
    )
    g.add_argument(
        "--stream-backlog-tokens",
        type=int,
        default=STREAM_BACKLOG_TOKENS,
        metavar="N",
        help="abort a streamed request whose client is this many tokens behind, beyond what the "
        f"sockets hold: a client that stops reading frees its KV blocks (default: {STREAM_BACKLOG_TOKENS})",
    )
    g.add_argument(
        "--uvicorn-log-level", default="warning", choices=UVICORN_LOG_LEVELS, help="(default: warning)"
    )


def _add_chat_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--tool-call-parser",
        choices=TOOL_CALL_PARSERS,
        default="hermes",
        help="<tool_call> JSON blocks, the Qwen3 format (the only one; default: hermes)",
    )
    g.add_argument(
        "--default-chat-template-kwargs",
        type=json_object,
        metavar="JSON",
        help='chat_template_kwargs of every request unless it sets its own, e.g. {"enable_thinking": false}',
    )
    g.add_argument(
        "--reasoning-effort-budgets",
        help="thinking tokens per reasoning effort level, e.g. low=1024,medium=8192,high=unlimited "
        "(defaults: minimal=256, low=1024, medium=8192, high and xhigh unlimited; none is always 0)",
    )


def _add_accepted_arguments(g: argparse._ArgumentGroup) -> None:
    """Flags from Qwen's model cards and vLLM's docs that ask for what qthink does anyway."""
    g.add_argument("--trust-remote-code", action="store_true", help="qthink runs no code from model folders")
    g.add_argument("--enable-auto-tool-choice", action="store_true", help="tool_choice auto is always on")
    g.add_argument(
        "--enable-reasoning", action="store_true", help="reasoning is always separated (older vLLM)"
    )
    g.add_argument("--enable-chunked-prefill", action="store_true", help="long prompts are always chunked")
    g.add_argument("--enforce-eager", action="store_true", help="qthink captures no CUDA graphs")


def served_names(args, model: str) -> list[str]:
    """--served-model-name, else the model as named on the command line; the demo model gets a
    readable name rather than its cache path."""
    if args.served_model_name:
        return list(args.served_model_name)
    named = args.model_path or args.model
    if named:
        return [named]
    from qthink.demo import model_display_name

    return [model_display_name(Path(model), None)]


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.model_path and args.model and args.model_path != args.model:
        raise SystemExit(
            f"qthink serve: error: two models given: {args.model_path!r} and --model {args.model!r}"
        )
    if args.trust_remote_code:
        log.info("--trust-remote-code: accepted; qthink runs no code from model folders (none is needed)")
    try:
        efforts = EffortBudgets.parse(args.reasoning_effort_budgets)
    except ValueError as e:
        raise SystemExit(f"qthink serve: error: --reasoning-effort-budgets: {e}") from None
    model, kwargs = model_and_engine_kwargs(args, args.model_path)
    engine = AsyncEngine(model, **kwargs)
    names = served_names(args, model)
    app = build_app(
        engine,
        names,
        api_key=args.api_key,
        metrics_public=args.metrics_public,
        allowed_origins=args.allowed_origins,
        web_ui=not args.no_web_ui,
        efforts=efforts,
        default_template_kwargs=args.default_chat_template_kwargs,
        stream_backlog_tokens=args.stream_backlog_tokens,
        max_request_bytes=args.max_request_bytes,
    )
    _log_ready(engine, model, names, args)
    ports = [args.port] + ([args.ollama_port] if args.ollama_port else [])
    return serve(app, args.host, ports, log_level=args.uvicorn_log_level, engine=engine)


def _log_ready(engine: AsyncEngine, model: str, names: list[str], args) -> None:
    core = engine.engine
    config = core.config
    log.info(
        "qthink serving %s as %s: dtype %s%s, %d KV blocks x %d tokens, max_model_len %d, "
        "at http://%s:%d/v1 (chat page at http://%s:%d/)",
        model,
        ", ".join(map(repr, names)),
        str(core.dtype).removeprefix("torch."),
        f", {config.quantization} weights" if config.quantization else "",
        core.blocks.num_blocks,
        config.block_size,
        core.max_model_len,
        args.host,
        args.port,
        args.host,
        args.port,
    )
