"""Ollama's API through the official ollama client against `qthink serve --ollama-port`."""

import json

import httpx
import ollama
import pytest

from qthink.server.thinking_budget import EARLY_STOP_TEXT
from tests.helpers.nano import NANO_TOOLS, nano_available, serve_nano
from tests.helpers.server import free_port

pytestmark = pytest.mark.skipif(not nano_available(), reason="qthink-nano's weights are not built")
ASK = [{"role": "user", "content": "What is 17 + 25?"}]
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def ports():
    port = free_port()
    with serve_nano("--ollama-port", str(port), "--reasoning-effort-budgets", "low=6") as base:
        yield base, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(ports):
    return ollama.Client(host=ports[1])


def test_list_show_version_ps_on_the_ollama_port(client, ports):
    assert [m.model for m in client.list().models] == ["nano:latest"]
    shown = client.show("nano")
    assert shown.details.family == "qwen3" and "thinking" in shown.capabilities
    assert shown.modelinfo["qwen3.context_length"] == 1024
    assert httpx.get(ports[1] + "/api/version").json()["version"]
    assert httpx.get(ports[1] + "/api/ps").json()["models"][0]["context_length"] == 1024
    assert httpx.get(ports[0] + "/api/tags").json() == httpx.get(ports[1] + "/api/tags").json()


def test_chat_with_think_returns_thinking_apart(client):
    r = client.chat(model="nano", messages=ASK, think=True, options=GREEDY)
    assert r.done and r.done_reason == "stop"
    assert "17 + 25" in r.message.thinking and r.message.content == "The answer is \\boxed{42}."
    assert r.prompt_eval_count > 0 and r.eval_count > 0 and r.eval_duration > 0


def test_streamed_chat_concatenates_to_the_whole_answer(client):
    whole = client.chat(model="nano", messages=ASK, think=True, options=GREEDY)
    parts = list(client.chat(model="nano", messages=ASK, think=True, stream=True, options=GREEDY))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.thinking or "" for p in parts) == whole.message.thinking
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count


def test_tool_call_round_trip(client):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What time is it in Paris?"},
    ]
    r = client.chat(model="nano", messages=messages, tools=NANO_TOOLS, options=GREEDY)
    (call,) = r.message.tool_calls
    assert call.function.name == "get_time" and call.function.arguments == {"city": "Paris"}
    result = {
        "role": "tool",
        "tool_name": "get_time",
        "content": json.dumps({"city": "Paris", "result": "09:41"}),
    }
    parts = list(
        client.chat(
            model="nano:latest",
            messages=messages + [r.message, result],
            tools=NANO_TOOLS,
            stream=True,
            options=GREEDY,
        )
    )
    assert "".join(p.message.content for p in parts) == "The time in Paris is 09:41."


def test_think_levels_and_off_are_the_thinking_budget(client):
    low = client.generate(model="nano", prompt="What is 17 + 25?", think="low", options=GREEDY)
    assert low.thinking.endswith(EARLY_STOP_TEXT) and low.response
    off = client.chat(model="nano", messages=ASK, think=False, options=GREEDY)
    assert off.message.thinking == EARLY_STOP_TEXT  # an always-thinking model: closed at once


def test_format_and_options(client):
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["A", "B", "C", "D"]}},
        "required": ["answer"],
    }
    r = client.chat(
        model="nano",
        messages=[
            {"role": "user", "content": "Which number is the largest? A) 12 B) 95 C) 40 D) 7. Reply in JSON."}
        ],
        format=schema,
        options=GREEDY,
    )
    assert json.loads(r.message.content)["answer"] in "ABCD"
    short = client.chat(model="nano", messages=ASK, options={"num_predict": 5, "seed": 1})
    assert short.done_reason == "length" and short.eval_count == 5
    stopped = client.chat(model="nano", messages=ASK, options={**GREEDY, "stop": ["boxed"]})
    assert stopped.message.content == "The answer is \\"
    fits = client.chat(model="nano", messages=ASK, options={**GREEDY, "num_ctx": 30})
    assert fits.done_reason == "length" and fits.prompt_eval_count + fits.eval_count == 30


def test_an_empty_request_loads_the_model(ports):
    for route, body in (("/api/chat", {"messages": []}), ("/api/generate", {"prompt": ""})):
        r = httpx.post(ports[1] + route, json={"model": "nano", **body})
        assert r.status_code == 200 and r.json()["done_reason"] == "load"


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"model": "llama3", "messages": ASK}, 404, "not found"),
        ({"model": "nano", "messages": ASK, "options": {"mirostat": 1}}, 400, "mirostat"),
        ({"model": "nano", "messages": ASK, "think": "max"}, 400, "think"),
        ({"model": "nano", "messages": ASK, "options": {"num_ctx": 5}}, 400, "num_ctx"),
        ({"model": "nano", "messages": ASK, "options": {"temperature": 50}}, 400, "temperature"),
    ],
)
def test_errors_have_ollamas_shape(ports, body, status, words):
    r = httpx.post(ports[1] + "/api/chat", json={"stream": False, **body})
    assert r.status_code == status and words in r.json()["error"]
