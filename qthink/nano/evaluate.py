"""qthink-nano's quality bar on held-out generated problems, through qthink's own engine (greedy)."""

import json
import random
import re

from qthink.engine.offline import LLM, Prompt
from qthink.engine.sampling_params import SamplingParams
from qthink.nano.data import (
    TOOLS,
    arithmetic,
    generated_tool_use,
    multiple_choice,
    multiplication,
    repetition,
    tool_use,
    varied_tool_use,
)
from qthink.parsing.tool_calls import parse_tool_calls

HELD_OUT_SEED = 2_000_003  # training draws from other seeds
# the tasks nano is trained on; the unseen tools (verb-subject pairs training never uses) and the
# novel ones (varied names training never calls) measure whether it calls a tool from its schema
TRAINED = (
    "arithmetic",
    "multiple_choice",
    "tool_call",
    "tool_answer",
    "multiplication",
    "unspaced",
    "repetition",
)
UNSEEN = (
    "unseen_tool_call",
    "unseen_tool_answer",
    "novel_tool_call",
    "novel_tool_answer",
    "novel_tool_alone",
)


def _boxed(text: str | None) -> str | None:
    found = re.findall(r"\\boxed\{([^{}]*)\}", text or "")
    return found[-1] if found else None


def held_out_problems(n: int) -> dict[str, list[tuple[list[dict], list[dict] | None, dict]]]:
    """Each task's problems as (prompt messages, tools, the expected last message)."""
    rng = random.Random(HELD_OUT_SEED)
    math = [arithmetic(rng) for _ in range(n)]
    choice = [multiple_choice(rng) for _ in range(n)]
    tools = [tool_use(rng) for _ in range(n)]
    times = [multiplication(rng) for _ in range(n)]
    unspaced = [(arithmetic if i % 2 else multiplication)(rng, spaced=False) for i in range(n)]
    unseen = [generated_tool_use(rng, held_out=True) for _ in range(n)]
    novel = [varied_tool_use(rng, held_out=True) for _ in range(n)]
    repeats = [repetition(rng) for _ in range(n)]  # drawn after the rest: they keep their problems
    alone = [varied_tool_use(rng, held_out=True, others=0) for _ in range(n)]
    return {
        "arithmetic": [(m[:-1], None, m[-1]) for m in math],
        "multiple_choice": [(m[:-1], None, m[-1]) for m in choice],
        "tool_call": [(first[:-1], TOOLS, first[-1]) for first, _ in tools],
        "tool_answer": [(whole[:-1], TOOLS, whole[-2]) for _, whole in tools],
        "multiplication": [(m[:-1], None, m[-1]) for m in times],
        "unspaced": [(m[:-1], None, m[-1]) for m in unspaced],
        "unseen_tool_call": [(first[:-1], specs, first[-1]) for first, _, specs in unseen],
        "unseen_tool_answer": [(whole[:-1], specs, whole[-2]) for _, whole, specs in unseen],
        "novel_tool_call": [(first[:-1], specs, first[-1]) for first, _, specs in novel],
        "novel_tool_answer": [(whole[:-1], specs, whole[-2]) for _, whole, specs in novel],
        "repetition": [(m[:-1], None, m[-1]) for m in repeats],
        "novel_tool_alone": [(first[:-1], specs, first[-1]) for first, _, specs in alone],
    }


def evaluate(
    model_path, n: int = 100, quantization: str | None = None, progress: bool = False
) -> dict[str, float]:
    llm = LLM(
        model=str(model_path),
        max_model_len=1024,
        kv_cache_memory=64 << 20,
        max_num_seqs=64,
        quantization=quantization,
    )
    tokenizer = llm.get_tokenizer()
    problems = held_out_problems(n)
    every = [p for task in problems.values() for p in task]
    prompts: list[Prompt] = [
        {"prompt_token_ids": tokenizer.apply_chat_template(m, tools=t, add_generation_prompt=True)}
        for m, t, _ in every
    ]
    outputs = iter(
        o.outputs[0] for o in llm.generate(prompts, SamplingParams(temperature=0, max_tokens=400), progress)
    )
    done = {
        task: [(next(outputs), tools, want) for _, tools, want in items] for task, items in problems.items()
    }
    think_end = llm.engine.thinking_format.end_id
    boxed = lambda task: _rate(_boxed(o.content) == _boxed(w["content"]) for o, _, w in done[task])  # noqa: E731
    calls = lambda task: _rate(_call_matches(o.content, t, w) for o, t, w in done[task])  # noqa: E731
    uses = lambda task: _rate(_result(w) in (o.content or "") for o, _, w in done[task])  # noqa: E731
    return {
        "arithmetic_boxed_correct": boxed("arithmetic"),
        "multiplication_boxed_correct": boxed("multiplication"),
        "unspaced_boxed_correct": boxed("unspaced"),
        "multiple_choice_json_correct": _rate(
            _json_answer(o.content) == json.loads(w["content"]) for o, _, w in done["multiple_choice"]
        ),
        "tool_call_correct": calls("tool_call"),
        "answer_uses_tool_result": uses("tool_answer"),
        "unseen_tool_call_correct": calls("unseen_tool_call"),
        "unseen_tool_answer_uses_result": uses("unseen_tool_answer"),
        "novel_tool_call_correct": calls("novel_tool_call"),
        "novel_tool_answer_uses_result": uses("novel_tool_answer"),
        "novel_tool_alone_call_correct": calls("novel_tool_alone"),
        "repetition_exact": _rate(o.content == w["content"] for o, _, w in done["repetition"]),
        "think_end_produced": _rate(think_end in o.token_ids for task in TRAINED for o, _, _ in done[task]),
        "unseen_tool_think_end_produced": _rate(
            think_end in o.token_ids for task in UNSEEN for o, _, _ in done[task]
        ),
        "reasoning_without_literal_think_end": _rate(
            "</think>" not in (o.reasoning_content or "") for items in done.values() for o, _, _ in items
        ),
    }


def _rate(hits) -> float:
    hits = list(hits)
    return sum(map(bool, hits)) / len(hits)


def _result(tool_message: dict) -> str:
    """The result a tool message carries: its JSON's "result", or the whole text."""
    try:
        return json.loads(tool_message["content"])["result"]
    except (json.JSONDecodeError, TypeError, KeyError):
        return tool_message["content"]


def _json_answer(text: str | None):
    try:
        return json.loads(text or "")
    except json.JSONDecodeError:
        return None


def _call_matches(content: str | None, tools: list[dict] | None, expected: dict) -> bool:
    _, calls = parse_tool_calls(content, tools)
    want = expected["tool_calls"][0]["function"]
    return (
        len(calls) == 1
        and calls[0]["function"]["name"] == want["name"]
        and json.loads(calls[0]["function"]["arguments"]) == want["arguments"]
    )
