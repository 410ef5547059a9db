"""Structured output constrains the answer after </think> and leaves the thinking free."""

import json

import jsonschema
import pytest
import torch

from qthink import LLM, SamplingParams
from qthink.engine.structured import StructuredOutputError

IM_END = 151645  # <|im_end|> in the Qwen3 vocabulary
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


@pytest.fixture(scope="module")
def compiler(tokenizer_dir):
    from qthink.engine.structured import GrammarCompiler

    return GrammarCompiler(tokenizer_dir / "tokenizer.json", 151_936, IM_END)


def _accepts(compiler, text: str) -> bool:
    """Whether the json_object grammar takes `text` as a whole answer."""
    state = compiler.state({"json_object": True}, active=True)
    ids = compiler._tokenizer.tokenize_str(text)
    return state.matcher.try_consume_tokens(ids) == len(ids) and state.matcher.is_accepting()


def test_json_object_bounds_strings_keys_members_and_nesting(compiler):
    from qthink.engine import structured as s

    assert _accepts(compiler, '{"a": [1, -2.5e3, true, null, {"b": "x\\\\n\\\\u00e9"}], "c": {}}')
    assert _accepts(compiler, json.dumps({"k" * s.JSON_OBJECT_KEY_CHARS: "v" * s.JSON_OBJECT_STRING_CHARS}))
    assert not _accepts(compiler, json.dumps({"k" * (s.JSON_OBJECT_KEY_CHARS + 1): 1}))
    assert not _accepts(compiler, json.dumps({"k": "v" * (s.JSON_OBJECT_STRING_CHARS + 1)}))
    assert _accepts(compiler, json.dumps({"k": list(range(s.JSON_OBJECT_ITEMS))}))
    assert not _accepts(compiler, json.dumps({"k": list(range(s.JSON_OBJECT_ITEMS + 1))}))
    nested = 1
    for _ in range(s.JSON_OBJECT_DEPTH):
        nested = [nested]
    assert _accepts(compiler, json.dumps({"k": nested}))
    assert not _accepts(compiler, json.dumps({"k": [nested]}))
    assert not _accepts(compiler, "[1]") and not _accepts(compiler, '{"a": 1')


@pytest.mark.parametrize("prefix", ['{"city": "Par', '{"a": [1, {"b": tr', '{"key', '{"a": -', '{"a": "\\\\'])
def test_json_object_closes_when_the_model_would_end_its_turn(compiler, prefix):
    """A model that wants to stop mid-object gets only the tokens that close it soonest."""

    state = compiler.state({"json_object": True}, active=True)
    for token in compiler._tokenizer.tokenize_str(prefix):
        state.observe(token)
    noise = torch.randn(151_936, generator=torch.Generator().manual_seed(0))
    text = prefix
    for _ in range(12):
        logits = noise.clone()
        logits[IM_END] = 30.0  # end of turn is what this model wants most
        state.mask(logits)
        token = int(logits.argmax())
        if token == IM_END:
            break
        state.observe(token)
        text += compiler._tokenizer.decode_str([token])
    assert token == IM_END, text
    assert isinstance(json.loads(text), dict)


def test_nano_finishes_a_json_object_answer():
    from qthink.nano import ensure_nano

    llm = LLM(model=str(ensure_nano()), max_model_len=1024, kv_cache_memory=16 << 20)
    params = SamplingParams(temperature=0, max_tokens=600, structured_output={"json_object": True})
    question = "Which number is the largest? A) 3 B) 9 C) 5 D) 1. Reply in JSON."
    out = llm.chat([{"role": "user", "content": question}], params)[0].outputs[0]
    assert out.finish_reason == "stop" and len(out.token_ids) < 300
    assert isinstance(json.loads(out.content), dict)


@pytest.mark.parametrize(
    "spec, needle",
    [
        ({"choice": ["a"] * 100_001}, "100001 entries; the limit is 100000"),
        ({"choice": ["a" * 1_500_000, "b" * 500_001]}, "2000001 characters in all"),
        ({"regex": "a" * 262_145}, "262145 characters long"),
        ({"json_schema": {"enum": ["x" * 262_144]}}, "characters as JSON; the limit is 262144"),
        (
            {"json_schema": {"items": {"properties": {f"p{i}": {} for i in range(1_001)}}}},
            "an object in the_field's JSON schema has 1001 properties; the limit is 1000",
        ),
        (
            {"json_schema": {"items": {"items": {"items": {}}}} | {"x": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}},
            None,
        ),
    ],
)
def test_specs_over_the_size_limits_are_refused_before_compiling(spec, needle):
    from qthink.engine.structured import check_spec

    if needle is None:
        check_spec(spec, "guided_json")  # 17 levels: well within
        return
    with pytest.raises(StructuredOutputError, match=needle) as err:
        check_spec(spec, "the_field")
    assert err.value.param == "the_field" and err.value.code == "grammar_too_large"


def test_a_choice_past_the_parsers_row_limit_compiles_and_constrains(compiler):
    """5,000 entries: one grammar rule per entry would pass llguidance's 2,000 items a row."""
    choices = [f"option {i}" for i in range(5_000)]
    state = compiler.state({"choice": choices}, active=True)
    for token in compiler._tokenizer.tokenize_str("option 4321"):
        assert state.allowed()[token]
        state.observe(token)
    assert state.allowed()[IM_END] and state.matcher.is_accepting()
    state = compiler.state({"choice": choices}, active=True)
    assert not state.allowed()[compiler._tokenizer.tokenize_str("Option")[0]]
