"""Parser regressions for bugs users reported against other servers, on real token sequences."""

import json
import random

import pytest

from qthink.parsing.thinking import ThinkingFormat
from qthink.parsing.tool_calls import (
    STREAMABLE_HEAD,
    ToolCallStreamParser,
    parse_call,
    parse_tool_calls,
    tool_names,
)
from qthink.tokenizer import IncrementalDetokenizer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "summary",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "outline": {"type": "array"}},
            },
        },
    },
    {"type": "function", "function": {"name": "current_time", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "list_files"}},
]


def token_deltas(tok, text):
    """The text as the engine streams it: one token at a time, UTF-8 safe."""
    detok = IncrementalDetokenizer(tok)
    return [detok.push([i]) for i in tok.encode(text)]


FORMAT = ThinkingFormat()  # the text split needs only the markers' text


def split_reasoning_text(text, thinking=True):
    return FORMAT.split(text, thinking)


def split_reasoning(ids, tok, thinking=True):
    return ThinkingFormat.from_tokenizer(tok).split(tok.decode(ids, skip_special_tokens=True), thinking)


def stream_reasoning(deltas, thinking=True):
    parser = FORMAT.stream(thinking)
    parts = [parser.feed(d, final=i == len(deltas) - 1) for i, d in enumerate(deltas)]
    reasoning, content = "".join(r for r, _ in parts), "".join(c for _, c in parts)
    return reasoning, content or None


def stream_tools(deltas, tools=TOOLS):
    """(content, [tool-call deltas]) from feeding `deltas` one by one."""
    parser = ToolCallStreamParser(tools)
    out = [d for text in deltas for d in parser.feed(text)] + parser.feed("", final=True)
    content = "".join(d["content"] for d in out if "content" in d).strip() or None
    return content, [d["tool_call"] for d in out if "tool_call" in d]


def merge_by_index(call_deltas):
    """What a client does with streamed calls: join the argument chunks of each index."""
    calls: dict[int, dict] = {}
    for d in call_deltas:
        entry = calls.setdefault(d["index"], {"id": None, "name": None, "arguments": ""})
        entry["id"] = d.get("id") or entry["id"]
        entry["name"] = d["function"].get("name") or entry["name"]
        entry["arguments"] += d["function"]["arguments"]
    return [calls[i] for i in sorted(calls)]


def hermes(name, arguments=None):
    body = {"name": name} if arguments is None else {"name": name, "arguments": arguments}
    return f"<tool_call>\n{json.dumps(body, ensure_ascii=False)}\n</tool_call>"


def test_2507_output_without_opening_think_is_split(tok):
    """vllm #22507: Qwen3-4B-Thinking-2507 never writes <think> (its template already did),
    and a parser that waited for one put the whole thinking into the content."""
    text = "The user greets me.\nI reply.\n</think>\n\nHello! How can I help?"
    ids = tok.encode(text)
    fmt = ThinkingFormat.from_tokenizer(tok)
    assert fmt.start_id not in ids and ids.count(fmt.end_id) == 1
    expected = ("The user greets me.\nI reply.", "Hello! How can I help?")
    assert split_reasoning(ids, tok) == expected
    assert stream_reasoning(token_deltas(tok, text)) == expected


def test_streamed_arguments_stay_with_their_call(tok):
    """vllm #19056: with Qwen3, streamed argument chunks came without the call they belong
    to, so clients merged them into a second, nameless call and the named one got ''."""
    args = {
        "query": "DeepSeek-R1-0528具体有哪些提升",
        "outline": [{"h2": "一、版本迭代背景", "guideline": "阐述研发历程"}, {"h2": "二、核心技术突破"}],
    }
    answer = "我来总结。\n" + hermes("summary", args)
    content, call_deltas = stream_tools(token_deltas(tok, answer))
    assert content == "我来总结。"
    assert {d["index"] for d in call_deltas} == {0}
    assert [bool(d.get("id")) for d in call_deltas] == [True] + [False] * (len(call_deltas) - 1)
    (merged,) = merge_by_index(call_deltas)
    (whole,) = parse_tool_calls(answer, TOOLS)[1]
    assert merged["name"] == "summary" and json.loads(merged["arguments"]) == args
    assert merged["arguments"] == whole["function"]["arguments"]


@pytest.mark.parametrize("block", [hermes("current_time", {}), hermes("list_files")])
def test_parameterless_tool_streams_empty_object(tok, block):
    """vllm #28806: for a tool without parameters the streamed arguments were dropped, while
    the whole response had "{}"; both must give "{}"."""
    (merged,) = merge_by_index(stream_tools(token_deltas(tok, block))[1])
    assert merged["arguments"] == "{}"
    assert parse_tool_calls(block, TOOLS)[1][0]["function"]["arguments"] == "{}"


def test_tool_call_drafted_in_thinking_is_not_called(tok):
    """A model that drafts the call while thinking, then makes it, calls the tool once."""
    text = f"Maybe {hermes('current_time', {})} is right.\n</think>\n\n{hermes('current_time', {})}"
    reasoning, content = split_reasoning(tok.encode(text), tok)
    assert "<tool_call>" in reasoning
    leftover, calls = parse_tool_calls(content, TOOLS)
    assert leftover is None and [c["function"]["name"] for c in calls] == ["current_time"]
    streamed_reasoning, streamed_content = stream_reasoning(token_deltas(tok, text))
    assert streamed_reasoning == reasoning
    assert len(merge_by_index(stream_tools([streamed_content])[1])) == 1


@pytest.mark.parametrize("cut", ["if a <", "then </", "almost </thi", "<th"])
def test_thinking_cut_off_mid_marker_keeps_every_character(tok, cut):
    """max_tokens can end the thinking right after a "<" that might have begun </think>:
    the stream releases it on the last delta, as the whole split keeps it."""
    expected = (cut, None)
    assert split_reasoning_text(cut) == expected
    assert stream_reasoning(token_deltas(tok, cut)) == expected


@pytest.mark.parametrize(
    "answer",
    [
        hermes("rm_rf", {"path": "/"}),
        '<tool_call>\n{"name": "current_time" "arguments": {}}</tool_call>',
        '<tool_call>\n{"name": ["current_time"], "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": {"a": 1}}\n</tool_call>',
        '<tool_call>\n{"name": 5, "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"arguments": {"query": "q"}, "name": "summary"} trailing\n</tool_call>',
        '<tool_call>\n{"name": "summary", "arguments": "not json"}\n</tool_call>',
        "<tool_call>\n[1, 2]\n</tool_call>",
    ],
    ids=[
        "unknown name",
        "malformed json",
        "name a list",
        "name an object",
        "name a number",
        "trailing text",
        "arguments not an object",
        "not an object",
    ],
)
def test_bad_blocks_are_content_whole_and_streamed(tok, answer):
    """Unknown names and malformed JSON are shown to the user as text, never a call or a 500."""
    assert parse_tool_calls(answer, TOOLS) == (answer, [])
    assert stream_tools(token_deltas(tok, answer)) == (answer, [])


def test_bad_block_does_not_hide_the_good_one(tok):
    answer = hermes("rm_rf", {}) + "\n" + hermes("summary", {"query": "q"}) + hermes("list_files")
    content, calls = parse_tool_calls(answer, TOOLS)
    assert content == hermes("rm_rf", {})
    assert [c["function"]["name"] for c in calls] == ["summary", "list_files"]
    streamed_content, deltas = stream_tools(token_deltas(tok, answer))
    merged = merge_by_index(deltas)
    assert streamed_content == content
    assert [(m["name"], m["arguments"]) for m in merged] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in calls
    ]
    assert len({m["id"] for m in merged}) == 2


def test_no_tools_means_the_block_is_text(tok):
    answer = hermes("summary", {"query": "q"})
    assert parse_tool_calls(answer, None) == (answer, [])
    assert parse_tool_calls(answer, []) == (answer, [])
    assert stream_tools(token_deltas(tok, answer), tools=None) == (answer, [])


PIECES = ["\n", "\n\n", "</think>", "<tool_call>", "</tool_call>", "<", "</", "ok", " 🚀", "上海"]
PIECES += [json.dumps({"name": "list_files"}), json.dumps({"name": "summary", "arguments": {"q": "é"}})]
PIECES += ['{"name": "nope"}', "{bad"]


def random_chunks(rng, text):
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 6)))) if text else []
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def test_streamed_equals_whole_on_random_outputs():
    """Any output, cut into deltas anywhere, thinking on or off: the stream adds up to the
    whole-text result (several </think>s included: both split at the first)."""
    rng = random.Random(0)
    for i in range(3000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 8)))
        thinking = i % 4 != 0
        reasoning, content = split_reasoning_text(text, thinking)
        streamed = stream_reasoning(random_chunks(rng, text), thinking)
        assert streamed == (reasoning or "", content or None), text
        whole_content, whole_calls = parse_tool_calls(content, TOOLS)
        streamed_content, deltas = stream_tools(random_chunks(rng, content or ""))
        assert streamed_content == whole_content or goes_bad_after_announcement(content), text
        assert [(m["name"], m["arguments"]) for m in merge_by_index(deltas)] == [
            (c["function"]["name"], c["function"]["arguments"]) for c in whole_calls
        ] or goes_bad_after_announcement(content), text


def goes_bad_after_announcement(text):
    """A block that starts like a call of a known tool and turns out malformed: a stream that
    announced the call before the fault cannot take it back, so chunking decides the result."""
    names = tool_names(TOOLS)
    for block in (text or "").split("<tool_call>")[1:]:
        body = block.split("</tool_call>")[0]
        head = STREAMABLE_HEAD.match(body)
        if head and json.loads(head.group(1)) in names and parse_call(body, names) is None:
            return True
    return False
