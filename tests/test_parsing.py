"""Reasoning and tool-call parsers: whole and streamed agree, on every edge case users hit."""

import json

import pytest

from qthink.parsing.thinking import ThinkingFormat
from qthink.parsing.tool_calls import ToolCallStreamParser, parse_tool_calls
from qthink.tokenizer import IncrementalDetokenizer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}},
]


def split_ids(tok, ids, thinking=True):
    """The whole split of generated ids, decoded as the engine decodes them."""
    return ThinkingFormat.from_tokenizer(tok).split(tok.decode(ids, skip_special_tokens=True), thinking)


def stream_text(tok, ids):
    """Text deltas as the engine produces them: one token at a time, UTF-8 safe."""
    detok = IncrementalDetokenizer(tok)
    return [detok.push([i]) for i in ids]


def streamed_split(tok, ids, thinking=True):
    parser = ThinkingFormat.from_tokenizer(tok).stream(thinking)
    parts = [parser.feed(d) for d in stream_text(tok, ids)]
    return "".join(r for r, _ in parts), "".join(c for _, c in parts)


CASES = [
    ("plain 2507", "I add 2 and 2.\n</think>\n\nThe answer is 4.", ("I add 2 and 2.", "The answer is 4.")),
    ("model opens think", "<think>\nHmm.\n</think>\n\nYes.", ("Hmm.", "Yes.")),
    ("never ends", "Thinking and thinking", ("Thinking and thinking", None)),
    ("empty answer", "Done.\n</think>\n\n", ("Done.", None)),
    ("chinese", "先想一想。\n</think>\n\n答案是 4 🚀", ("先想一想。", "答案是 4 🚀")),
    (
        "tool call inside thinking",
        '<tool_call>\n{"name": "ping"}\n</tool_call> no\n</think>\n\nok',
        ('<tool_call>\n{"name": "ping"}\n</tool_call> no', "ok"),
    ),
]


@pytest.mark.parametrize("name, text, expected", CASES, ids=[c[0] for c in CASES])
def test_split_whole_tokens_text_and_stream_agree(tok, fmt, name, text, expected):
    ids = tok.encode(text)
    assert split_ids(tok, ids) == expected
    assert fmt.split(text, True) == expected
    reasoning, content = streamed_split(tok, ids)
    assert (reasoning, content or None) == expected


def test_think_end_split_across_deltas(fmt):
    parser = fmt.stream(True)
    parts = [parser.feed(d) for d in ["abc</th", "in", "k>\n", "\nanswer"]]
    assert "".join(r for r, _ in parts) == "abc"
    assert "".join(c for _, c in parts) == "answer"


def test_thinking_disabled_is_all_content(tok, fmt):
    assert split_ids(tok, tok.encode("Just an answer."), thinking=False) == (None, "Just an answer.")
    assert fmt.split("Just an answer.", thinking=False) == (None, "Just an answer.")


def test_split_is_at_the_first_think_end(tok, fmt):
    ids = tok.encode("a</think>b</think>c")
    assert ids.count(fmt.end_id) == 2
    assert split_ids(tok, ids) == ("a", "b</think>c")


def call_block(name, args):
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args}, ensure_ascii=False)}\n</tool_call>"


def streamed_calls(text, tools, chunk=3):
    parser = ToolCallStreamParser(tools)
    deltas = []
    for i in range(0, len(text), chunk):
        deltas += parser.feed(text[i : i + chunk])
    deltas += parser.feed("", final=True)
    content = "".join(d["content"] for d in deltas if "content" in d)
    calls = {}
    for d in (d["tool_call"] for d in deltas if "tool_call" in d):
        entry = calls.setdefault(d["index"], {"name": None, "arguments": ""})
        if "id" in d:
            assert entry["name"] is None and d["function"]["name"]  # announced once, name first
            entry["name"] = d["function"]["name"]
        entry["arguments"] += d["function"]["arguments"]
    return content, [calls[i] for i in sorted(calls)]


TOOL_CASES = [
    ("one call", call_block("get_weather", {"city": "Paris"}), None, [("get_weather", {"city": "Paris"})]),
    (
        "parallel calls",
        call_block("get_weather", {"city": "上海"}) + "\n" + call_block("ping", {}),
        None,
        [("get_weather", {"city": "上海"}), ("ping", {})],
    ),
    ("no arguments key gets {}", '<tool_call>\n{"name": "ping"}\n</tool_call>', None, [("ping", {})]),
    ("text before", "Let me check.\n" + call_block("ping", {}), "Let me check.", [("ping", {})]),
    (
        "malformed json stays content",
        '<tool_call>\n{"name": "ping" "arguments": {}}</tool_call>',
        '<tool_call>\n{"name": "ping" "arguments": {}}</tool_call>',
        [],
    ),
    ("unknown tool stays content", call_block("rm_rf", {}), call_block("rm_rf", {}), []),
    ("unclosed block stays content", '<tool_call>\n{"name": "ping"', '<tool_call>\n{"name": "ping"', []),
    ("no call", "Sunny, 20 degrees.", "Sunny, 20 degrees.", []),
]


@pytest.mark.parametrize("name, text, content, calls", TOOL_CASES, ids=[c[0] for c in TOOL_CASES])
def test_tool_calls_whole_and_streamed(name, text, content, calls):
    whole_content, whole_calls = parse_tool_calls(text, TOOLS)
    assert whole_content == content
    got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in whole_calls]
    assert got == calls
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in whole_calls)
    stream_content, stream_calls = streamed_calls(text, TOOLS)
    assert (stream_content.strip() or None) == content
    assert [(c["name"], json.loads(c["arguments"])) for c in stream_calls] == calls
    assert [c["arguments"] for c in stream_calls] == [c["function"]["arguments"] for c in whole_calls]


def test_no_tools_means_no_parsing():
    text = call_block("ping", {})
    assert parse_tool_calls(text, None) == (text, [])
    assert streamed_calls(text, None)[1] == []
