"""`qthink generate` and `qthink chat`: thinking streamed dimmed and set apart, then the answer."""

import argparse
from typing import Any

from rich.console import Console

from qthink.demo import model_display_name, model_or_default
from qthink.engine.engine import LLMEngine
from qthink.engine.sampling_params import SamplingParams
from qthink.engine_flags import add_engine_arguments, engine_config_from_args
from qthink.errors import RequestError


def add_model_arguments(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """--model, --chat-template and every engine setting's flag (generated from EngineConfig)."""
    p.add_argument("--model", help="model folder or Hugging Face id (default: the offline demo model)")
    p.add_argument("--chat-template", help="'thinking-2507', 'qwen3', a .jinja file or a template")
    add_engine_arguments(p, skip=skip)


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, help="default: the model's (0.6 on Qwen3)")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--max-tokens", type=int, help="default: what the context leaves after the prompt")
    p.add_argument("--max-thinking-tokens", type=int)
    p.add_argument("--seed", type=int, dest="sampling_seed", help="seed of this sampling")
    p.add_argument("--no-thinking", action="store_true", help="enable_thinking=False (hybrid templates)")


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    add_model_arguments(p, skip=("seed",))  # --seed here seeds the sampling of this one request
    add_sampling_arguments(p)
    if command == "generate":
        p.add_argument("prompt", help="the user message")


def model_and_engine_kwargs(args, model: str | None = None, **changes) -> tuple[str, dict]:
    """The model to load (the offline demo model when none is named) and the engine's
    arguments: its EngineConfig from the flags (with `changes`) and the chat template."""
    model = model or args.model
    model = model_or_default(model)
    return model, {"config": engine_config_from_args(args, **changes), "chat_template": args.chat_template}


def engine_from_args(args, **changes) -> LLMEngine:
    model, kwargs = model_and_engine_kwargs(args, **changes)
    return LLMEngine(model, **kwargs)


def sampling_from_args(args) -> SamplingParams:
    return SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        presence_penalty=args.presence_penalty,
        seed=args.sampling_seed,
        max_tokens=args.max_tokens,
        max_thinking_tokens=args.max_thinking_tokens,
    )


def respond(engine: LLMEngine, messages: list[dict], args, console: Console) -> tuple[str, str]:
    """Stream one assistant turn; returns (thinking, answer)."""
    template_kwargs: dict[str, Any] = {"enable_thinking": False} if args.no_thinking else {}
    prompt = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, **template_kwargs)
    state = engine.add_request(prompt, sampling_from_args(args))
    output = state.outputs[0]
    parser = engine.thinking_format.stream(output.seq.prompt_opens_thinking)
    thinking: list[str] = []
    answer: list[str] = []
    seen = 0
    while not output.seq.finished:
        engine.step()
        reasoning_delta, content_delta = parser.feed(output.text[seen:], final=output.seq.finished)
        seen = len(output.text)
        if reasoning_delta:
            if not thinking:
                console.print("[bold magenta]── thinking ──[/]")
            thinking.append(reasoning_delta)
            console.print(reasoning_delta, style="dim italic", end="", markup=False, highlight=False)
        if content_delta:
            if not answer:
                console.print("\n[bold green]── answer ──[/]")
            answer.append(content_delta)
            console.print(content_delta, end="", markup=False, highlight=False)
    console.print()
    if output.seq.finish_reason == "length":
        console.print("[yellow](stopped at max_tokens)[/]")
    return "".join(thinking), "".join(answer)


def run(args) -> int:
    console = Console(highlight=False)
    engine = engine_from_args(args)
    if args.command == "generate":
        respond(engine, [{"role": "user", "content": args.prompt}], args, console)
        return 0
    return chat_loop(engine, args, console)


def chat_loop(engine: LLMEngine, args, console: Console) -> int:
    """Multi-turn chat; history keeps each answer and drops its thinking, as Qwen recommends."""
    console.print(
        f"[bold]qthink chat[/] — {model_display_name(engine.model_dir, args.model)}. "
        "Empty line or Ctrl-D to quit, /reset to start over."
    )
    history: list[dict] = []
    while True:
        try:
            line = console.input("[bold cyan]you> [/]")
        except (EOFError, KeyboardInterrupt):
            break
        if not line.strip():
            break
        if line.strip() == "/reset":
            history = []
            continue
        history.append({"role": "user", "content": line})
        try:
            _, answer = respond(engine, history, args, console)
        except RequestError as e:
            console.print(f"[red]{e}[/] (/reset starts a new chat)")
            history.pop()
            continue
        history.append({"role": "assistant", "content": answer})
    return 0
