"""`qthink serve|chat|generate|agent|eval|bench|plan|view|nano`: one entry point, one module per command."""

import argparse
import difflib
import sys
from importlib import import_module

# command -> (module with add_arguments(parser) and run(args), one-line help)
COMMANDS = {
    "serve": ("qthink.server.cli", "OpenAI-compatible server (reasoning_content, tools, streaming)"),
    "chat": ("qthink.chat_cli", "interactive multi-turn chat in the terminal"),
    "generate": ("qthink.chat_cli", "generate once from a prompt and print thinking, then answer"),
    "agent": ("qthink.agent.cli", "agent with Python tools, MCP servers and a code interpreter"),
    "eval": ("qthink.eval.cli", "run benchmarks against any OpenAI-compatible endpoint"),
    "bench": ("qthink.bench_cli", "measure prefill and decode speed"),
    "plan": ("qthink.plan_cli", "print the memory budget of a configuration before loading it"),
    "view": ("qthink.viewer.cli", "open saved thinking traces in the browser viewer"),
    "nano": ("qthink.nano.cli", "build (once) and evaluate the tiny trained qthink-nano model"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Build the parser; only the module of the command being run is imported."""
    parser = argparse.ArgumentParser(prog="qthink", description="Run Qwen3 thinking models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        if name == chosen:
            parser.set_defaults(_command_parser=p)
            mod = import_module(module)
            mod.add_arguments(p, name) if _takes_name(mod) else mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def _takes_name(mod) -> bool:
    return mod.add_arguments.__code__.co_argcount == 2


def main(argv: list[str] | None = None) -> None:
    from qthink.extras import MissingExtra

    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser(argv)
    except MissingExtra as e:
        sys.exit(f"qthink: {e}")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _refuse_unknown(getattr(args, "_command_parser", parser), unknown)
    try:
        code = args._run(args)
    except MissingExtra as e:
        sys.exit(f"qthink {args.command}: {e}")
    except Exception as e:
        if not _is_reported_error(e):
            raise
        sys.exit(f"qthink {args.command}: error: {e}")
    sys.exit(code or 0)


def _refuse_unknown(parser: argparse.ArgumentParser, unknown: list[str]) -> None:
    """Exit naming the first unknown argument and the known flag closest to it."""
    flags = [s for action in parser._actions for s in action.option_strings]
    first = next((u for u in unknown if u.startswith("-")), unknown[0])
    name = first.split("=", 1)[0]
    close = difflib.get_close_matches(name, flags, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close and name.startswith("-") else ""
    parser.error(f"unrecognized argument {name}{hint}")


def _is_reported_error(e: Exception) -> bool:
    """A bad setting or model (one clear line), or a tensor-parallel rank that died (its own
    error), rather than a bug (a traceback)."""
    from qthink.config import ConfigError
    from qthink.engine.rank_supervisor import RankDiedError
    from qthink.loader import LoadError

    return isinstance(e, (ConfigError, LoadError, RankDiedError))
