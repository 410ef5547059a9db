"""Chat responses and streams shaped from engine outputs that a random-weight model never writes:
tool calls the model chose itself, a call drafted in the thinking, thinking cut mid-marker."""

import asyncio
import json
import random

import pytest

from qthink.server.errors import APIError
from qthink.server.streaming import last_output
from tests.helpers.chat_view import engine_outputs, streamed, view_for

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}},
]
DRAFT = '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>'
CALLS = (
    '<tool_call>\n{"name": "get_time", "arguments": {"city": "東京"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "ping"}\n</tool_call>'
)


def assemble(chunks: list[dict]) -> dict:
    """The message a client builds from the chunks, the way the openai SDK's helpers do."""
    message = {"reasoning_content": "", "reasoning": "", "content": "", "tool_calls": {}}
    finish = None
    for chunk in chunks:
        (choice,) = chunk["choices"]
        delta = choice["delta"]
        for key in ("reasoning_content", "reasoning", "content"):
            message[key] += delta.get(key) or ""
        for call in delta.get("tool_calls", []):
            entry = message["tool_calls"].setdefault(call["index"], {"name": "", "arguments": ""})
            entry["name"] += call["function"].get("name") or ""
            entry["arguments"] += call["function"]["arguments"]
        finish = choice["finish_reason"] or finish
    return {**message, "finish_reason": finish}


def test_calls_chosen_by_the_model_whole_and_streamed(tok):
    text = f"I should check. {DRAFT} maybe.\n</think>\n\nChecking.\n{CALLS}"
    outs = engine_outputs(tok, text, "stop")
    whole = view_for(tools=TOOLS).response(outs[-1])["choices"][0]
    message = whole["message"]
    assert whole["finish_reason"] == "tool_calls"
    assert message["reasoning_content"] == message["reasoning"] == f"I should check. {DRAFT} maybe."
    assert message["content"] == "Checking."
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]]
    assert calls == [("get_time", {"city": "東京"}), ("ping", {})]  # the drafted call is not made
    got = assemble(streamed(view_for(tools=TOOLS, stream=True), outs))
    assert got["reasoning_content"] == got["reasoning"] == message["reasoning_content"]
    assert got["content"] == message["content"]
    assert [(c["name"], c["arguments"]) for c in got["tool_calls"].values()] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]
    ]
    assert got["finish_reason"] == "tool_calls"


def test_tool_choice_none_leaves_blocks_as_text(tok):
    outs = engine_outputs(tok, f"Thinking.\n</think>\n\n{CALLS}", "stop")
    whole = view_for(tools=TOOLS, tool_choice="none").response(outs[-1])["choices"][0]
    assert whole["message"]["content"] == CALLS and "tool_calls" not in whole["message"]
    got = assemble(streamed(view_for(tools=TOOLS, tool_choice="none", stream=True), outs))
    assert got["content"] == CALLS and not got["tool_calls"] and got["finish_reason"] == "stop"


def test_thinking_cut_after_a_lone_angle_bracket(tok):
    """max_tokens ends the thinking just after "<": nothing is lost in the stream."""
    outs = engine_outputs(tok, "Is 3 < 4? Yes, and 4 <", "length")
    whole = view_for().response(outs[-1])["choices"][0]
    assert whole["finish_reason"] == "length" and whole["message"]["content"] is None
    got = assemble(streamed(view_for(stream=True), outs))
    assert got["reasoning_content"] == whole["message"]["reasoning_content"] == "Is 3 < 4? Yes, and 4 <"
    assert got["content"] == "" and got["finish_reason"] == "length"


def test_include_reasoning_false_sends_only_the_answer(tok):
    outs = engine_outputs(tok, "Secret plan.\n</think>\n\nFour.", "stop")
    message = view_for(include_reasoning=False).response(outs[-1])["choices"][0]["message"]
    assert "reasoning_content" not in message and message["content"] == "Four."
    got = assemble(streamed(view_for(include_reasoning=False, stream=True), outs))
    assert got["reasoning_content"] == "" and got["content"] == "Four."


def test_usage_counts_thinking_up_to_the_first_think_end(tok):
    text = "a</think>b</think>\n\nanswer"
    outs = engine_outputs(tok, text, "stop")
    ids = outs[-1].outputs[0].token_ids
    body = view_for().response(outs[-1])
    message = body["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == ("a", "b</think>\n\nanswer")
    details = body["usage"]["completion_tokens_details"]
    assert details["reasoning_tokens"] == len(tok.encode("a"))
    assert details["reasoning_tokens"] + 1 + len(tok.encode("b</think>\n\nanswer")) == len(ids)
    got = assemble(streamed(view_for(stream=True), outs))
    assert (got["reasoning_content"], got["content"]) == ("a", "b</think>\n\nanswer")


PIECES = ["\n", "\n\n", " ", "</think>", "<tool_call>", "</tool_call>", "<", "ok", "上海", "{bad"]
PIECES += ['{"name": "ping"}', '{"name": "get_time", "arguments": {"city": "x"}}', '{"name": "nope"}']


@pytest.mark.parametrize("tools", [TOOLS, None], ids=["tools", "no tools"])
def test_stream_adds_up_to_the_whole_response_on_random_outputs(tok, tools):
    rng = random.Random(7)
    for _ in range(60):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 9)))
        if text.count("</think>") > 1:
            continue  # the model writes one; a stream cannot take back text before a later one
        outs = engine_outputs(tok, text, rng.choice(["stop", "length"]))
        whole = view_for(tools=tools).response(outs[-1])["choices"][0]
        message = whole["message"]
        got = assemble(streamed(view_for(tools=tools, stream=True), outs))
        assert got["reasoning_content"] == (message.get("reasoning_content") or ""), text
        assert got["content"] == (message["content"] or ""), text
        assert [(c["name"], c["arguments"]) for c in got["tool_calls"].values()] == [
            (c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls", [])
        ], text
        assert got["finish_reason"] == whole["finish_reason"], text


def test_a_request_failed_in_the_engine_is_a_500_with_its_message(tok):
    outs = engine_outputs(tok, "Thinking", "error")
    outs[-1].error = "RuntimeError: grammar state lost"  # as the engine reports a failed request

    async def source():
        for out in outs:
            yield out

    with pytest.raises(APIError) as err:
        asyncio.run(last_output(source()))
    assert err.value.status == 500 and "grammar state lost" in err.value.message
    chunks = streamed(view_for(stream=True), outs)
    assert chunks[-1]["error"]["message"] == "RuntimeError: grammar state lost"
