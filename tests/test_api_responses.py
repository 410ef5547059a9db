"""/v1/responses through the official openai client against `qthink serve` of qthink-nano."""

import json

import httpx
import openai
import pytest

from qthink.server.thinking_budget import EARLY_STOP_TEXT
from tests.helpers.nano import NANO_TOOLS, nano_available, serve_nano

pytestmark = pytest.mark.skipif(not nano_available(), reason="qthink-nano's weights are not built")
TOOLS = [{"type": "function", **t["function"]} for t in NANO_TOOLS]
SYSTEM = "You are a helpful assistant."  # nano learnt tool use under this system prompt


@pytest.fixture(scope="module")
def url():
    with serve_nano("--reasoning-effort-budgets", "low=6,medium=unlimited") as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def test_create_returns_reasoning_item_answer_and_usage(client):
    r = client.responses.create(model="nano", input="What is 17 + 25?", temperature=0)
    assert r.status == "completed" and [o.type for o in r.output] == ["reasoning", "message"]
    assert "17 + 25" in r.output[0].content[0].text
    assert r.output_text == "The answer is \\boxed{42}."
    details = r.usage.output_tokens_details
    assert 0 < details.reasoning_tokens < r.usage.output_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_stream_events_follow_the_official_sequence(client):
    kwargs = dict(model="nano", input="What is 17 + 25?", temperature=0)
    whole = client.responses.create(**kwargs)
    with client.responses.stream(**kwargs) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    order = [k for i, k in enumerate(kinds) if k != kinds[i - 1]]  # runs of deltas as one
    assert order[4:] == [
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == whole.output_text
    assert final.output[0].content[0].text == whole.output[0].content[0].text


def test_function_call_round_trip_through_previous_response_id(client):
    first = client.responses.create(
        model="nano", instructions=SYSTEM, input="What time is it in Paris?", tools=TOOLS, temperature=0
    )
    call = next(o for o in first.output if o.type == "function_call")
    assert call.name == "get_time" and json.loads(call.arguments) == {"city": "Paris"}
    result = {
        "type": "function_call_output",
        "call_id": call.call_id,
        "output": '{"city": "Paris", "result": "09:41"}',
    }
    second = client.responses.create(
        model="nano",
        instructions=SYSTEM,
        previous_response_id=first.id,
        input=[result],
        tools=TOOLS,
        temperature=0,
    )
    assert second.output_text == "The time in Paris is 09:41."
    assert client.responses.retrieve(second.id).output_text == second.output_text


def test_function_call_round_trip_with_items_sent_back_and_streamed(client):
    ask = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    with client.responses.stream(
        model="nano", instructions=SYSTEM, input=ask, tools=TOOLS, temperature=0, store=False
    ) as stream:
        kinds = [e.type for e in stream]
        first = stream.get_final_response()
    assert "response.function_call_arguments.done" in kinds
    call = first.output[-1]
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Tokyo"}
    with pytest.raises(openai.BadRequestError, match="no stored response"):
        client.responses.create(model="nano", previous_response_id=first.id, input="again")
    items = ask + [o.model_dump(exclude_none=True) for o in first.output]
    items.append(
        {
            "type": "function_call_output",
            "call_id": call.call_id,
            "output": '{"city": "Tokyo", "result": "20 C, sunny"}',
        }
    )
    second = client.responses.create(
        model="nano", instructions=SYSTEM, input=items, tools=TOOLS, temperature=0
    )
    assert second.output_text == "The weather in Tokyo is 20 C, sunny."


def test_reasoning_effort_is_the_thinking_budget(client, url):
    r = client.responses.create(
        model="nano", input="What is 17 + 25?", temperature=0, reasoning={"effort": "minimal"}
    )
    body = httpx.get(f"{url}/v1/responses/{r.id}").json()
    assert body["thinking_budget"]["max_thinking_tokens"] == 256 and not body["thinking_budget"]["disabled"]
    off = client.responses.create(
        model="nano", input="What is 17 + 25?", temperature=0, reasoning={"effort": "none"}
    )
    thinking = httpx.get(f"{url}/v1/responses/{off.id}").json()["thinking_budget"]
    assert (
        thinking["disabled"] and thinking["max_thinking_tokens"] == 0 and "always thinks" in thinking["note"]
    )
    assert off.output[0].content[0].text == EARLY_STOP_TEXT  # closed at once: no thinking of its own
    low = client.responses.create(
        model="nano", input="What is 17 + 25?", temperature=0, reasoning={"effort": "low"}
    )
    thinking = httpx.get(f"{url}/v1/responses/{low.id}").json()["thinking_budget"]
    assert thinking == {"max_thinking_tokens": 6, "disabled": False, "closed_by": "thinking_budget"}
    assert low.status == "completed" and low.output[0].content[0].text.endswith(EARLY_STOP_TEXT)


def test_text_format_json_schema_constrains_the_answer(client):
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["A", "B", "C", "D"]}},
        "required": ["answer"],
    }
    r = client.responses.create(
        model="nano",
        input="Which number is the largest? A) 12 B) 95 C) 40 D) 7. Reply in JSON.",
        temperature=0,
        text={"format": {"type": "json_schema", "name": "choice", "schema": schema}},
    )
    assert json.loads(r.output_text)["answer"] in "ABCD"
    assert r.output[0].type == "reasoning"


@pytest.mark.parametrize(
    "body, words",
    [
        ({"input": "hi", "frobnicate": 1}, "frobnicate"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "function tools"),
        ({"input": "hi", "tools": [{"type": "namespace", "name": "x", "tools": []}]}, "function tools"),
        ({"input": "hi", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"input": [{"type": "input_image", "image_url": "x"}]}, "input_image"),
        ({"input": "hi", "previous_response_id": "resp_nope"}, "no stored response"),
        ({"input": "hi", "model": "gpt-5"}, "not served here"),
    ],
)
def test_bad_requests_are_400s_that_name_the_problem(url, body, words):
    r = httpx.post(url + "/v1/responses", json={"model": "nano", **body})
    assert r.status_code == 400 and words in r.json()["error"]["message"]
