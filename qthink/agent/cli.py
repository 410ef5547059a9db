"""`qthink agent`: an interactive agent in the terminal, with thinking, tool calls and results shown apart."""

import argparse
import json
import os
import sys

import openai

from qthink.agent.assistant import Assistant
from qthink.demo import model_or_default
from qthink.sandbox.jail import SandboxUnavailable

STYLES = {"thinking": "2", "answer": "0", "call": "36", "result": "33", "error": "31"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-server", default="http://127.0.0.1:8000/v1", help="OpenAI-compatible URL, or 'local'"
    )
    parser.add_argument("--model", default=None, help="model name (server) or path/hub id (local)")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "EMPTY"))
    parser.add_argument("--mcp", action="append", default=[], help="MCP config JSON ({'mcpServers': {...}})")
    parser.add_argument("--code-interpreter", action="store_true", help="enable the sandboxed Python tool")
    parser.add_argument("--work-dir", default=None, help="the code interpreter's working directory")
    parser.add_argument("--allow-network", action="store_true", help="let interpreted code use the network")
    parser.add_argument(
        "--unsafe-code-interpreter",
        action="store_true",
        help="run the code interpreter even where no OS jail can be made (the code can do anything you can)",
    )
    parser.add_argument(
        "--check-sandbox",
        action="store_true",
        help="print what isolation this machine gives the code interpreter",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per code interpreter call")
    parser.add_argument("--system", default=None, help="system message")
    parser.add_argument("--max-rounds", type=int, default=10, help="model calls per user turn")
    parser.add_argument(
        "--generate-cfg", default="{}", help="sampling as JSON, e.g. '{\"temperature\": 0.6}'"
    )
    parser.add_argument("-p", "--prompt", default=None, help="answer one prompt and exit")
    parser.add_argument("--no-color", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.check_sandbox:
        from qthink.agent.sandbox_check import check, print_report

        return print_report(check())
    try:
        bot = Assistant(
            llm=llm_config(args),
            function_list=function_list(args),
            system_message=args.system,
            max_rounds=args.max_rounds,
        )
    except SandboxUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    printer = Printer(color=sys.stdout.isatty() and not args.no_color)
    messages: list[dict] = []
    try:
        for prompt in prompts(args):
            messages.append({"role": "user", "content": prompt})
            try:
                messages.extend(printer.show(bot.run(messages)))
            except KeyboardInterrupt:
                printer.line("error", "[interrupted]")
                messages.pop()
            except openai.OpenAIError as exc:  # a refused request ends the turn, not the session
                printer.line("error", f"[error] {exc}")
                messages.pop()
    finally:
        bot.close()
    return 0


def llm_config(args: argparse.Namespace) -> dict:
    return {
        "model": model_or_default(args.model) if args.model_server == "local" else args.model,
        "model_server": args.model_server,
        "api_key": args.api_key,
        "generate_cfg": json.loads(args.generate_cfg),
    }


def function_list(args: argparse.Namespace) -> list:
    tools: list = [json.loads(open(path).read()) for path in args.mcp]
    if args.code_interpreter:
        cfg = {"name": "code_interpreter", "timeout": args.timeout, "allow_network": args.allow_network}
        if args.unsafe_code_interpreter:
            cfg["allow_unsafe"] = True
        tools.append(dict(cfg, work_dir=args.work_dir) if args.work_dir else cfg)
    return tools


def prompts(args: argparse.Namespace):
    if args.prompt is not None:
        yield args.prompt
        return
    interactive = sys.stdin.isatty()
    while True:
        try:
            text = input("you> " if interactive else "")
        except EOFError:
            return
        if text.strip() in ("exit", "quit", "/exit"):
            return
        if text.strip():
            yield text


class Printer:
    """Prints the growing response list as it streams: each part once, labelled and coloured."""

    def __init__(self, color: bool):
        self.color = color

    def show(self, states) -> list[dict]:
        response: list[dict] = []
        shown: dict[int, dict] = {}
        for response in states:
            for index, message in enumerate(response):
                self._show_message(message, shown.setdefault(index, {}), complete=index < len(response) - 1)
        for index, message in enumerate(response):
            self._show_message(message, shown[index], complete=True)
        return response

    def line(self, style: str, text: str) -> None:
        print(self._paint(style, text), flush=True)

    def _show_message(self, message: dict, shown: dict, complete: bool) -> None:
        if message["role"] == "tool":
            if not shown.get("done"):
                shown["done"] = True
                self.line("result", f"[result {message.get('name', '')}] {message['content']}")
            return
        self._stream_part("thinking", message.get("reasoning_content") or "", shown)
        self._stream_part("answer", message.get("content") or "", shown)
        if complete and not shown.get("done"):
            shown["done"] = True
            if shown.get("open"):
                print(flush=True)
            for call in message.get("tool_calls") or []:
                function = call["function"]
                self.line("call", f"[call {function['name']}] {function['arguments']}")

    def _stream_part(self, part: str, text: str, shown: dict) -> None:
        new = text[shown.get(part, 0) :]
        if not new:
            return
        if part not in shown:
            if shown.get("open"):
                print(flush=True)
            print(self._paint(part, f"[{part}] "), end="")
        shown[part], shown["open"] = len(text), True
        print(self._paint(part, new), end="", flush=True)

    def _paint(self, style: str, text: str) -> str:
        return f"\x1b[{STYLES[style]}m{text}\x1b[0m" if self.color else text
