"""The cases vLLM's tests pin for its qwen3 and deepseek_r1 reasoning parsers and its hermes tool
parser, run through qthink's parsers whole and token by token with the real Qwen3 tokenizer.
Where qthink answers differently on purpose, the test says so (see docs/compatibility.md)."""
# ruff: noqa: E501  (case tables read best one case a line)

import asyncio
import json

import pytest

from qthink.parsing.thinking import ThinkingFormat
from qthink.parsing.tool_calls import ToolCallStreamParser, parse_tool_calls
from qthink.server.streaming import last_output
from qthink.tokenizer import IncrementalDetokenizer, Tokenizer
from tests.helpers.chat_view import engine_outputs, streamed, view_for

OPEN_PROMPT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"  # 2507 templates
PLAIN_PROMPT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"  # hybrid, thinking on
CLOSED_PROMPT = PLAIN_PROMPT + "<think>\n\n</think>\n\n"  # hybrid, enable_thinking=False


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return Tokenizer.from_pretrained(tokenizer_dir)


def token_deltas(tok, text: str, per_delta: int = 1) -> list[str]:
    """The text as the engine streams it: `per_delta` tokens at a time, UTF-8 safe."""
    ids, detok = tok.encode(text), IncrementalDetokenizer(tok)
    deltas = [detok.push(ids[i : i + per_delta]) for i in range(0, len(ids), per_delta)]
    return deltas + [detok.finish()]


def split_both_ways(tok, parser: str, prompt: str, output: str) -> tuple[tuple, tuple]:
    """(whole split, streamed split) of `output` after `prompt` under a reasoning parser."""
    fmt = ThinkingFormat.from_tokenizer(tok, parser)
    thinking = fmt.prompt_opens_thinking(tok.encode(prompt))
    whole = fmt.split(output, thinking)
    stream = fmt.stream(thinking)
    deltas = token_deltas(tok, output)
    parts = [stream.feed(d, final=i == len(deltas) - 1) for i, d in enumerate(deltas)]
    reasoning = "".join(r for r, _ in parts) if whole[0] is not None else None
    return whole, (reasoning, "".join(c for _, c in parts) or None)


# ---- reasoning: vLLM's qwen3 parser cases ---------------------------------------------------

QWEN3_CASES = [
    # (id, prompt, output, reasoning, content)
    ("end only", OPEN_PROMPT, "This is a reasoning section</think>This is the rest", "This is a reasoning section", "This is the rest"),
    ("end only, nothing after", OPEN_PROMPT, "This is a reasoning section</think>", "This is a reasoning section", None),
    ("think in output", PLAIN_PROMPT, "<think>This is a reasoning section</think>This is the rest", "This is a reasoning section", "This is the rest"),
    ("no markers, truncated", OPEN_PROMPT, "This is the rest", "This is the rest", None),
    ("complete, no content", PLAIN_PROMPT, "<think>This is a reasoning section</think>", "This is a reasoning section", None),
    ("multiline", PLAIN_PROMPT, "<think>This is a reasoning\nsection</think>This is the rest\nThat", "This is a reasoning\nsection", "This is the rest\nThat"),
    ("open, never closed", PLAIN_PROMPT, "<think>This is a reasoning section", "This is a reasoning section", None),
    ("thinking disabled", CLOSED_PROMPT, "This is plain content", None, "This is plain content"),
    ("thinking disabled, tool call", CLOSED_PROMPT, 'Reading it.\n\n<tool_call>\n{"name": "f"}\n</tool_call>', None, 'Reading it.\n\n<tool_call>\n{"name": "f"}\n</tool_call>'),
    ("real shape", OPEN_PROMPT, "The user says hi.\n</think>\n\nHello!", "The user says hi.", "Hello!"),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, prompt, output, reasoning, content", QWEN3_CASES, ids=[c[0] for c in QWEN3_CASES]
)
def test_qwen3_reasoning_cases(tok, name, prompt, output, reasoning, content):
    whole, stream = split_both_ways(tok, "qwen3", prompt, output)
    assert whole == (reasoning, content)
    assert stream == whole


@pytest.mark.parametrize(
    "deltas, reasoning, content",
    [
        (["<think>This is a reasoning section", "</think>", "This is the rest"], "This is a reasoning section", "This is the rest"),
        (["reasoning section", "</think>This is the rest"], "reasoning section", "This is the rest"),
        (["<think>reasoning</think>"], "reasoning", ""),
        (["<thi", "nk>split start</th", "ink>after"], "split start", "after"),
    ],
)  # fmt: skip
def test_several_tokens_in_one_delta(tok, deltas, reasoning, content):
    """A delta may carry several tokens (speculative decoding): <think> never leaks into the reasoning."""
    fmt = ThinkingFormat.from_tokenizer(tok)
    stream = fmt.stream(fmt.prompt_opens_thinking(tok.encode(OPEN_PROMPT)))
    parts = [stream.feed(d, final=i == len(deltas) - 1) for i, d in enumerate(deltas)]
    assert ("".join(r for r, _ in parts), "".join(c for _, c in parts)) == (reasoning, content)


def test_tool_call_inside_unclosed_thinking_stays_reasoning(tok):
    """Deliberate difference: vLLM's qwen3 parser ends the thinking at a <tool_call> that comes
    before any </think> (Qwen3.5's XML calls); for Qwen3 a call drafted while thinking is the
    model musing, so it stays reasoning until </think>."""
    output = 'I need to read the file.\n\n<tool_call>\n{"name": "f"}\n</tool_call>'
    whole, stream = split_both_ways(tok, "qwen3", OPEN_PROMPT, output)
    assert whole == (output, None) and stream == whole


def test_bare_end_after_a_prompt_without_markers(tok):
    """Deliberate difference: after a prompt that did not open <think>, qwen3 in qthink reads
    output without <think> as content, a stray </think> included; deepseek_r1 reads it as
    thinking, as vLLM's qwen3 parser also does."""
    output = "This is a reasoning section</think>This is the rest"
    assert split_both_ways(tok, "qwen3", PLAIN_PROMPT, output)[0] == (None, output)
    assert split_both_ways(tok, "deepseek_r1", PLAIN_PROMPT, output)[0] == (
        "This is a reasoning section",
        "This is the rest",
    )


# ---- reasoning: vLLM's deepseek_r1 parser cases (no <think> in the prompt) --------------------

R1_CASES = [
    ("simple", "This is a reasoning section</think>This is the rest", "This is a reasoning section", "This is the rest"),
    ("complete", "This is a reasoning section</think>", "This is a reasoning section", None),
    ("no end: all reasoning", "This is content", "This is content", None),
    ("multiple lines", "This\nThat</think>This is the rest\nThat", "This\nThat", "This is the rest\nThat"),
    ("shortest", "</think>This is the rest", "", "This is the rest"),
    ("with think", "<think>This is a reasoning section</think>This is the rest", "This is a reasoning section", "This is the rest"),
    ("complete with think", "<think>This is a reasoning section</think>", "This is a reasoning section", None),
    ("multiple lines with think", "<think>This\nThat</think>This is the rest\nThat", "This\nThat", "This is the rest\nThat"),
    ("think, no end", "<think>This is a reasoning section", "This is a reasoning section", None),
    ("empty", "", "", None),
    ("model writes the markers", "<think>\nLet me see.\n</think>\n\n42", "Let me see.", "42"),
]  # fmt: skip


@pytest.mark.parametrize("name, output, reasoning, content", R1_CASES, ids=[c[0] for c in R1_CASES])
def test_deepseek_r1_reasoning_cases(tok, name, output, reasoning, content):
    whole, stream = split_both_ways(tok, "deepseek_r1", PLAIN_PROMPT, output)
    assert whole == (reasoning, content)
    assert stream == whole


def test_deepseek_r1_respects_a_prompt_that_closed_the_thinking(tok):
    assert split_both_ways(tok, "deepseek_r1", CLOSED_PROMPT, "Just this.")[0] == (None, "Just this.")


def test_deepseek_r1_reads_only_the_last_turn(tok):
    """A closed thinking in an earlier assistant turn does not close the new one."""
    prompt = (
        PLAIN_PROMPT + "<think>\nold\n</think>\n\nold answer<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n"
    )
    prompt += "<|im_start|>assistant\n"
    fmt = ThinkingFormat.from_tokenizer(tok, "deepseek_r1")
    assert fmt.prompt_opens_thinking(tok.encode(prompt))
    assert not ThinkingFormat.from_tokenizer(tok).prompt_opens_thinking(tok.encode(prompt))


def test_unknown_reasoning_parser_is_refused(tok):
    with pytest.raises(ValueError, match="deepseek_r1"):
        ThinkingFormat.from_tokenizer(tok, "granite")


def test_new_line_before_think(tok):
    """Deliberate difference: vLLM's deepseek_r1 drops text before a <think> that is not at the
    start (and streams it otherwise); qthink keeps what the model wrote, the same whole and
    streamed."""
    output = "\n<think>This is a reasoning section</think>\nThis is the rest"
    whole, stream = split_both_ways(tok, "deepseek_r1", PLAIN_PROMPT, output)
    assert whole == ("<think>This is a reasoning section", "This is the rest") and stream == whole


# ---- tool calls: vLLM's hermes parser cases -------------------------------------------------

TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("final_answer", "get_current_temperature", "get_weather", "search", "f", "get_db_config")
]


def stream_calls(tok, text: str, per_delta: int = 1) -> tuple[str, list[dict], list[dict]]:
    """(content, merged calls, raw tool-call deltas) from streaming `text` per_delta tokens at a time."""
    parser = ToolCallStreamParser(TOOLS)
    deltas = token_deltas(tok, text, per_delta)
    out = [d for i, delta in enumerate(deltas) for d in parser.feed(delta, final=i == len(deltas) - 1)]
    raw = [d["tool_call"] for d in out if "tool_call" in d]
    merged: dict[int, dict] = {}
    for d in raw:
        entry = merged.setdefault(d["index"], {"name": None, "arguments": ""})
        if "id" in d:
            assert entry["name"] is None, "a call is announced once"
            entry["name"] = d["function"]["name"]
        entry["arguments"] += d["function"]["arguments"]
    content = "".join(d["content"] for d in out if "content" in d).strip() or None
    return content, [merged[i] for i in sorted(merged)], raw


def whole_calls(text: str) -> tuple[str | None, list[tuple[str, str]]]:
    content, calls = parse_tool_calls(text, TOOLS)
    return content, [(c["function"]["name"], c["function"]["arguments"]) for c in calls]


def test_plain_text_is_forwarded(tok):
    text = "This is some prior text that has nothing to do with tool calling."
    for per_delta in (1, 2, 3, 5):
        assert stream_calls(tok, text, per_delta)[:2] == (text, [])
    assert whole_calls(text) == (text, [])


@pytest.mark.parametrize("per_delta", [1, 2, 5])
def test_boolean_arguments_stream_with_their_call(tok, per_delta):
    """vLLM #19056: the arguments of a call with a boolean came back empty when streamed."""
    text = '<tool_call>\n{"name": "final_answer", "arguments": {"trigger": true}}\n</tool_call>'
    content, calls, raw = stream_calls(tok, text, per_delta)
    assert content is None and calls == [{"name": "final_answer", "arguments": '{"trigger": true}'}]
    assert raw[0]["function"]["name"] == "final_answer" and {d["index"] for d in raw} == {0}
    assert whole_calls(text) == (None, [("final_answer", '{"trigger": true}')])


def test_arguments_stream_as_they_are_generated(tok):
    """The name goes out once it is written; the arguments follow in many small pieces."""
    text = (
        '<tool_call>\n{"name": "get_current_temperature", "arguments": {"location": '
        '"San Francisco, California, United States", "unit": "celsius"}}\n</tool_call>'
    )
    parser = ToolCallStreamParser(TOOLS)
    seen, announced_at, pieces = "", None, 0
    for delta in token_deltas(tok, text):
        seen += delta
        for d in parser.feed(delta):
            if "id" in d.get("tool_call", {}):
                announced_at = len(seen)
            elif "tool_call" in d:
                pieces += 1
    assert announced_at is not None and announced_at < seen.index("San Francisco")
    assert pieces > 10
    _, calls, _ = stream_calls(tok, text)
    args = json.loads(calls[0]["arguments"])
    assert args == {"location": "San Francisco, California, United States", "unit": "celsius"}


@pytest.mark.parametrize("per_delta", [1, 2, 3, 5, 8])
def test_content_then_call(tok, per_delta):
    text = 'Sure, let me check the weather.<tool_call>{"name": "get_weather", "arguments": {"city": "NYC"}}</tool_call>'
    expected = ("Sure, let me check the weather.", [{"name": "get_weather", "arguments": '{"city": "NYC"}'}])
    assert stream_calls(tok, text, per_delta)[:2] == expected
    assert whole_calls(text) == ("Sure, let me check the weather.", [("get_weather", '{"city": "NYC"}')])


@pytest.mark.parametrize("per_delta", [1, 2, 4])
def test_two_calls_get_two_indexes(tok, per_delta):
    text = (
        '<tool_call>{"name": "search", "arguments": {"q": "cats"}}</tool_call>'
        '<tool_call>{"name": "search", "arguments": {"q": "dogs"}}</tool_call>'
    )
    content, calls, raw = stream_calls(tok, text, per_delta)
    assert content is None
    assert calls == [
        {"name": "search", "arguments": '{"q": "cats"}'},
        {"name": "search", "arguments": '{"q": "dogs"}'},
    ]
    assert len({d["id"] for d in raw if "id" in d}) == 2
    assert whole_calls(text)[1] == [("search", '{"q": "cats"}'), ("search", '{"q": "dogs"}')]


def test_call_not_closed_before_the_end_of_the_output(tok):
    """The model ended its turn (EOS) right after the JSON, without </tool_call>."""
    text = '<tool_call>\n{"name": "final_answer", "arguments": {"trigger": true}}'
    assert whole_calls(text) == (None, [("final_answer", '{"trigger": true}')])
    assert stream_calls(tok, text)[:2] == (None, [{"name": "final_answer", "arguments": '{"trigger": true}'}])


def test_unclosed_invalid_json_is_content(tok):
    text = '<tool_call>\n{"name": "final_answer", "arguments": {"trigger": true}'
    assert whole_calls(text) == (text, [])


def test_serialized_arguments_pass_through(tok):
    """Arguments the model wrote as a JSON string holding an object are that object's text."""
    text = '<tool_call>\n{"name": "get_db_config", "arguments": "{\\"param\\": \\"max_connections\\"}"}\n</tool_call>'
    expected = [("get_db_config", '{"param": "max_connections"}')]
    assert whole_calls(text) == (None, expected)
    for per_delta in (1, 2, 3, 5):
        _, calls, _ = stream_calls(tok, text, per_delta)
        assert [(c["name"], c["arguments"]) for c in calls] == expected


@pytest.mark.parametrize("value", ["hello", "{hello world}", "[oops", '{"a": 1} tail text', "[1, 2]"])
def test_string_arguments_that_hold_no_object_are_content(tok, value):
    """Deliberate difference: vLLM turns these into a call whose arguments decode to a string;
    no OpenAI client can call a function with that, so qthink leaves the block as content."""
    text = "<tool_call>" + json.dumps({"name": "f", "arguments": value}) + "</tool_call>"
    assert whole_calls(text) == (text, [])
    for per_delta in (1, 3):
        assert stream_calls(tok, text, per_delta)[:2] == (text, [])


def test_content_and_call_in_one_delta(tok):
    text = 'Hi!<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'
    assert stream_calls(tok, text, per_delta=10_000)[:2] == ("Hi!", [{"name": "f", "arguments": '{"x": 1}'}])


def test_long_thinking_then_call(tok):
    """A long Chinese thinking, then a call: the split and the call agree whole and streamed."""
    thinking = "好的，用户要研发一个5MW的燃气轮机，需要确定总体参数。" * 20 + "\n"
    call = {"name": "search", "arguments": {"q": "5MW燃气轮机设计参数 空气流量 压气机压比 转速"}}
    output = (
        thinking + "</think>\n\n<tool_call>\n" + json.dumps(call, ensure_ascii=False) + "\n</tool_call>\n\n "
    )
    (reasoning, content), streamed_split = split_both_ways(tok, "qwen3", OPEN_PROMPT, output)
    assert streamed_split == (reasoning, content) and reasoning == thinking.strip("\n")
    arguments = json.dumps(call["arguments"], ensure_ascii=False)
    assert whole_calls(content) == (None, [("search", arguments)])
    assert stream_calls(tok, content)[:2] == (None, [{"name": "search", "arguments": arguments}])


# ---- the stream the server sends ------------------------------------------------------------


def test_each_chunk_has_one_entry_per_call(tok):
    text = (
        "\n</think>\n\nChecking both.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    )
    view = view_for(tools=TOOLS, stream=True)
    chunks = streamed(view, engine_outputs(tok, text, "stop"))
    entries = [e for c in chunks for e in (c["choices"][0]["delta"].get("tool_calls") or [])]
    for c in chunks:
        indexes = [e["index"] for e in c["choices"][0]["delta"].get("tool_calls") or []]
        assert len(indexes) == len(set(indexes))
    heads = [e for e in entries if "id" in e]
    assert [(h["index"], h["function"]["name"]) for h in heads] == [(0, "get_weather"), (1, "get_weather")]
    for index, city in ((0, "Paris"), (1, "Rome")):
        pieces = [e["function"]["arguments"] for e in entries if e["index"] == index]
        assert len(pieces) > 2 and json.loads("".join(pieces)) == {"city": city}
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content == "Checking both."
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    "answer",
    [
        '<tool_call>\n{"name": ["get_weather"], "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": {"x": 1}}\n</tool_call>',
        "<tool_call>\nnot json at all\n</tool_call>",
        "<tool_call>\n" + "[" * 5000 + "\n</tool_call>",
    ],
    ids=["name a list", "name an object", "not json", "deep nesting"],
)
def test_malformed_blocks_never_fail_the_response(tok, answer):
    """A block that is not a call comes back as content, whole and streamed: no 500, no error event."""
    view = view_for(tools=TOOLS)
    outs = engine_outputs(tok, "\n</think>\n\n" + answer, "stop")

    async def source():
        for out in outs:
            yield out

    message = view.response(asyncio.run(last_output(source())))["choices"][0]["message"]
    assert message["content"] == answer and "tool_calls" not in message
    chunks = streamed(view_for(tools=TOOLS, stream=True), outs)
    assert not any("error" in c for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content == answer


# ---- the flags ----------------------------------------------------------------------------


def test_reasoning_parser_and_literal_special_tokens_flags_reach_the_engine(tiny_model_dir):
    import argparse

    from qthink.engine.engine import LLMEngine
    from qthink.engine_flags import add_engine_arguments, engine_config_from_args

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    args = parser.parse_args(["--reasoning-parser", "deepseek_r1", "--literal-special-tokens"])
    config = engine_config_from_args(args, max_model_len=256, dtype="float32")
    engine = LLMEngine(str(tiny_model_dir), config=config)
    assert engine.thinking_format.opens_by_default and engine.tokenizer.literal_special_tokens
    default = engine_config_from_args(parser.parse_args([]))
    assert (default.reasoning_parser, default.literal_special_tokens) == ("qwen3", False)
    with pytest.raises(SystemExit):
        parser.parse_args(["--reasoning-parser", "granite"])
