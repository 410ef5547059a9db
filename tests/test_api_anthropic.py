"""/v1/messages and /v1/messages/count_tokens through the official anthropic client against `qthink serve`."""

import json

import anthropic
import httpx
import pytest

from qthink.server.thinking_budget import EARLY_STOP_TEXT
from tests.helpers.nano import NANO_TOOLS, nano_available, serve_nano

pytestmark = pytest.mark.skipif(not nano_available(), reason="qthink-nano's weights are not built")
KEY = "sk-local"
TOOLS = [
    {"name": f["name"], "description": f["description"], "input_schema": f["parameters"]}
    for f in (t["function"] for t in NANO_TOOLS)
]
SYSTEM = "You are a helpful assistant."  # nano learnt tool use under this system prompt
ASK = [{"role": "user", "content": "What is 17 + 25?"}]
RAW = {"message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta"}
RAW |= {"message_stop"}  # the wire events; the SDK also yields its own (text, thinking, ...)
GREEDY = {"extra_body": {"temperature": 0}}  # this SDK version sends sampling fields only as extras


@pytest.fixture(scope="module")
def url():
    with serve_nano("--api-key", KEY) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0)


def test_create_returns_thinking_and_text_blocks(client):
    r = client.messages.create(model="nano", max_tokens=200, messages=ASK, **GREEDY)
    assert [b.type for b in r.content] == ["thinking", "text"]
    assert "17 + 25" in r.content[0].thinking and r.content[0].signature
    assert r.content[1].text == "The answer is \\boxed{42}." and r.stop_reason == "end_turn"
    assert 0 < r.usage.output_tokens_details.thinking_tokens < r.usage.output_tokens


def test_stream_with_a_thinking_budget_closes_the_thinking(client):
    with client.messages.stream(
        model="nano", max_tokens=200, messages=ASK, thinking={"type": "enabled", "budget_tokens": 5}, **GREEDY
    ) as stream:
        events = [(e.type, getattr(getattr(e, "delta", None), "type", None)) for e in stream if e.type in RAW]
        final = stream.get_final_message()
    runs = [e for i, e in enumerate(events) if e != events[i - 1]]
    assert runs[:6] == [
        ("message_start", None),
        ("content_block_start", None),
        ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "signature_delta"),
        ("content_block_stop", None),
        ("content_block_start", None),
    ]
    assert runs[-4:] == [
        ("content_block_delta", "text_delta"),
        ("content_block_stop", None),
        ("message_delta", None),
        ("message_stop", None),
    ]
    thinking = final.content[0].thinking
    assert thinking.endswith(EARLY_STOP_TEXT) and final.content[1].type == "text"
    assert final.usage.output_tokens_details.thinking_tokens <= 5 + len(EARLY_STOP_TEXT.split()) * 2


def test_tool_use_round_trip(client):
    messages = [{"role": "user", "content": "What time is it in Paris?"}]
    first = client.messages.create(
        model="nano", max_tokens=200, system=SYSTEM, messages=messages, tools=TOOLS, **GREEDY
    )
    use = first.content[-1]
    assert first.stop_reason == "tool_use" and use.type == "tool_use"
    assert use.name == "get_time" and use.input == {"city": "Paris"}
    result = {
        "type": "tool_result",
        "tool_use_id": use.id,
        "content": json.dumps({"city": "Paris", "result": "09:41"}),
    }
    messages += [{"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}]
    with client.messages.stream(
        model="nano", max_tokens=200, system=SYSTEM, messages=messages, tools=TOOLS, **GREEDY
    ) as stream:
        second = stream.get_final_message()
    assert second.content[-1].text == "The time in Paris is 09:41."
    count = client.messages.count_tokens(model="nano", system=SYSTEM, messages=messages, tools=TOOLS)
    assert count.input_tokens == second.usage.input_tokens + second.usage.cache_read_input_tokens


def test_streamed_tool_use_carries_its_input_as_json_deltas(client):
    with client.messages.stream(
        model="nano",
        max_tokens=200,
        system=SYSTEM,
        messages=[{"role": "user", "content": "What is the weather in Tokyo?"}],
        tools=TOOLS,
        tool_choice={"type": "any"},
        **GREEDY,
    ) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "input_json_delta" in deltas and final.stop_reason == "tool_use"
    assert final.content[-1].input == {"city": "Tokyo"}


def test_stop_sequences_and_disabled_thinking(client, url):
    r = client.messages.create(model="nano", max_tokens=200, messages=ASK, stop_sequences=["boxed"], **GREEDY)
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == "boxed"
    assert r.content[-1].text == "The answer is \\"
    body = {
        "model": "nano",
        "max_tokens": 100,
        "messages": ASK,
        "thinking": {"type": "disabled"},
        "temperature": 0,
    }
    off = httpx.post(
        url + "/v1/messages", json=body, headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    )
    thinking = off.json()["thinking_budget"]
    assert (
        thinking["disabled"] and thinking["max_thinking_tokens"] == 0 and "always thinks" in thinking["note"]
    )
    assert off.json()["content"][0]["thinking"] == EARLY_STOP_TEXT


def test_what_claude_code_sends(url):
    """A max_tokens past the context is a cap; system turns among the messages; a context edit
    that keeps everything."""
    body = {
        "model": "nano",
        "max_tokens": 32000,
        "messages": ASK + [{"role": "system", "content": "Answer briefly."}],
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "thinking": {"type": "adaptive"},
        "temperature": 0,
    }
    r = httpx.post(url + "/v1/messages?beta=true", json=body, headers={"x-api-key": KEY}, timeout=120)
    assert r.status_code == 200 and r.json()["stop_reason"] in ("end_turn", "max_tokens")
    body["context_management"] = {"edits": [{"type": "clear_tool_uses_20250919"}]}
    r = httpx.post(url + "/v1/messages", json=body, headers={"x-api-key": KEY})
    assert r.status_code == 400 and "context_management.edits.0" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "body, status, kind, words",
    [
        ({"messages": ASK, "max_tokens": 5, "frobnicate": 1}, 400, "invalid_request_error", "frobnicate"),
        ({"messages": ASK}, 400, "invalid_request_error", "max_tokens"),
        ({"messages": ASK, "max_tokens": 5, "model": "claude-x"}, 400, "invalid_request_error", "not served"),
        (
            {"messages": ASK, "max_tokens": 5, "tools": [{"type": "bash_20250124", "name": "bash"}]},
            400,
            "invalid_request_error",
            "custom tools",
        ),
    ],
)
def test_errors_have_anthropics_shape(url, body, status, kind, words):
    r = httpx.post(url + "/v1/messages", json={"model": "nano", **body}, headers={"x-api-key": KEY})
    assert r.status_code == status and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == kind and words in r.json()["error"]["message"]


def test_a_wrong_key_is_an_authentication_error(url):
    bad = anthropic.Anthropic(base_url=url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="nano", max_tokens=5, messages=ASK)
