"""qthink-nano's quality bar on held-out generated problems, through qthink's own engine (greedy)."""

import json
import random
import re

from qthink.engine.offline import LLM
from qthink.engine.sampling_params import SamplingParams
from qthink.nano.data import TOOLS, arithmetic, multiple_choice, tool_use
from qthink.parsing.tool_calls import parse_tool_calls

HELD_OUT_SEED = 2_000_003  # training draws from other seeds


def _boxed(text: str | None) -> str | None:
    found = re.findall(r"\\boxed\{([^{}]*)\}", text or "")
    return found[-1] if found else None


def evaluate(model_path, n: int = 100, quantization: str | None = None) -> dict[str, float]:
    llm = LLM(
        model=str(model_path),
        max_model_len=1024,
        kv_cache_memory=64 << 20,
        max_num_seqs=64,
        quantization=quantization,
    )
    rng = random.Random(HELD_OUT_SEED)
    greedy = SamplingParams(temperature=0, max_tokens=300)
    math = [arithmetic(rng) for _ in range(n)]
    choice = [multiple_choice(rng) for _ in range(n)]
    tools = [tool_use(rng) for _ in range(n)]
    outs_math = llm.chat([m[:-1] for m in math], greedy)
    outs_choice = llm.chat([m[:-1] for m in choice], greedy)
    outs_call = llm.chat([first[:-1] for first, _ in tools], greedy, tools=TOOLS)
    outs_answer = llm.chat([whole[:-1] for _, whole in tools], greedy, tools=TOOLS)
    every = [o.outputs[0] for o in outs_math + outs_choice + outs_call + outs_answer]
    think_end = llm.engine.thinking_format.end_id
    return {
        "arithmetic_boxed_correct": _rate(
            _boxed(o.outputs[0].content) == _boxed(m[-1]["content"]) for o, m in zip(outs_math, math)
        ),
        "multiple_choice_json_correct": _rate(
            _json_answer(o.outputs[0].content) == json.loads(m[-1]["content"])
            for o, m in zip(outs_choice, choice)
        ),
        "tool_call_correct": _rate(
            _call_matches(o.outputs[0].content, first[-1]) for o, (first, _) in zip(outs_call, tools)
        ),
        "answer_uses_tool_result": _rate(
            json.loads(whole[-2]["content"])["result"] in (o.outputs[0].content or "")
            for o, (_, whole) in zip(outs_answer, tools)
        ),
        "think_end_produced": _rate(think_end in c.token_ids for c in every),
    }


def _rate(hits) -> float:
    hits = list(hits)
    return sum(map(bool, hits)) / len(hits)


def _json_answer(text: str | None):
    try:
        return json.loads(text or "")
    except json.JSONDecodeError:
        return None


def _call_matches(content: str | None, expected: dict) -> bool:
    _, calls = parse_tool_calls(content, TOOLS)
    want = expected["tool_calls"][0]["function"]
    return (
        len(calls) == 1
        and calls[0]["function"]["name"] == want["name"]
        and json.loads(calls[0]["function"]["arguments"]) == want["arguments"]
    )
