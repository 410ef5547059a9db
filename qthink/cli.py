"""`qthink serve|chat|generate|agent|eval|bench|plan|view|nano`: one entry point, one module per command."""

import argparse
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
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            mod = import_module(module)
            mod.add_arguments(p, name) if _takes_name(mod) else mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def _takes_name(mod) -> bool:
    return mod.add_arguments.__code__.co_argcount == 2


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    sys.exit(args._run(args) or 0)
