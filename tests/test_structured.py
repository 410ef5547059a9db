"""Structured output constrains the answer after </think> and leaves the thinking free."""

import json

import jsonschema
import pytest

from qthink import LLM, SamplingParams
from qthink.engine.structured import StructuredOutputError

SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["A", "B", "C", "D"]},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
    },
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}
QUESTION = [{"role": "user", "content": "Which letter? Reply as JSON."}]


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(model=str(tiny_model_dir), dtype="float32", max_model_len=512, kv_cache_memory=8 << 20)


def constrained(spec, **kw):
    return SamplingParams(
        temperature=1.0, seed=7, max_tokens=120, max_thinking_tokens=12, structured_output=spec, **kw
    )


def test_json_schema_answers_validate_while_thinking_is_free(llm):
    free = llm.chat(QUESTION, SamplingParams(temperature=1.0, seed=7, max_tokens=120, max_thinking_tokens=12))
    outs = llm.chat([QUESTION] * 4, [constrained({"json_schema": SCHEMA}, n=1)] * 4)
    for out in outs:
        o = out.outputs[0]
        assert o.finish_reason == "stop"
        jsonschema.validate(json.loads(o.content), SCHEMA)
    thinking_end = free[0].outputs[0].token_ids.index(llm.get_tokenizer().token_to_id("</think>"))
    # Same seed, same thinking: the constraint only starts after </think>.
    assert outs[0].outputs[0].token_ids[:thinking_end] == free[0].outputs[0].token_ids[:thinking_end]


def test_choice_and_regex(llm):
    o = llm.chat(QUESTION, constrained({"choice": ["yes", "no", "maybe"]}))[0].outputs[0]
    assert o.content in {"yes", "no", "maybe"}
    o = llm.chat(QUESTION, constrained({"regex": r"[0-9]{3}-[a-z]{2}"}))[0].outputs[0]
    assert len(o.content) == 6 and o.content[3] == "-"


def test_json_object_mixed_with_unconstrained_rows(llm):
    # A random model never closes a free-form object, so check what it wrote is a JSON prefix.
    params = [
        constrained({"json_object": True}),
        SamplingParams(temperature=1.0, max_tokens=30, ignore_eos=True),
    ]
    outs = llm.chat([QUESTION, QUESTION], params)
    content = outs[0].outputs[0].content
    assert content.startswith("{") and "\n" not in content
    assert len(outs[1].outputs[0].token_ids) == 30


def test_without_thinking_the_constraint_starts_at_once(make_checkpoint):
    llm = LLM(
        model=str(make_checkpoint(seed=2)),
        dtype="float32",
        max_model_len=256,
        kv_cache_memory=4 << 20,
        chat_template="qwen3",
    )
    out = llm.chat(
        QUESTION,
        SamplingParams(temperature=1.0, seed=1, max_tokens=80, structured_output={"json_schema": SCHEMA}),
        chat_template_kwargs={"enable_thinking": False},
    )[0].outputs[0]
    jsonschema.validate(json.loads(out.text), SCHEMA)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"json_schema": {"type": "strin"}}, "unsupported structured output"),
        ({"regex": "a["}, "invalid"),
        ({"choice": []}, "non-empty list"),
        ({"xml": "<a/>"}, "unknown structured output kind"),
    ],
)
def test_bad_specs_are_refused_before_queueing(llm, spec, message):
    with pytest.raises(StructuredOutputError, match=message):
        llm.chat(QUESTION, SamplingParams(structured_output=spec))
    assert not llm.engine.requests
