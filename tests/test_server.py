"""The OpenAI-compatible server over a real socket, driven by the official openai client."""

import json

import httpx
import openai
import pytest

from tests.helpers.server import RunningServer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "time in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo"]}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}},
]
ASK = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with RunningServer(tiny_model_dir) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def chat(client, **kw):
    base = dict(
        model="qthink-test", messages=ASK, max_tokens=48, temperature=0, extra_body={"max_thinking_tokens": 8}
    )
    return client.chat.completions.create(**{**base, **kw})


def test_chat_splits_reasoning_from_content(client):
    r = chat(client)
    m = r.choices[0].message
    assert m.reasoning_content and m.reasoning == m.reasoning_content
    assert "</think>" not in m.reasoning_content and "</think>" not in (m.content or "")
    assert r.usage.completion_tokens == 48 or r.choices[0].finish_reason == "stop"
    assert 0 < r.usage.completion_tokens_details.reasoning_tokens < r.usage.completion_tokens


def test_unfinished_thinking_is_reasoning_with_null_content(client):
    r = client.chat.completions.create(model="qthink-test", messages=ASK, max_tokens=6, temperature=0)
    c = r.choices[0]
    assert (
        c.finish_reason == "length" and c.message.content is None and c.message.reasoning_content is not None
    )
    assert r.usage.completion_tokens_details.reasoning_tokens == 6


def test_stream_concatenates_to_the_whole_message(client):
    whole = chat(client).choices[0].message
    reasoning, content, finish, usage = "", "", None, None
    for chunk in chat(client, stream=True, stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            d = c.delta
            reasoning += getattr(d, "reasoning_content", None) or ""
            content += d.content or ""
            finish = c.finish_reason or finish
    assert reasoning == whole.reasoning_content
    assert (content or None) == whole.content
    assert finish in ("stop", "length") and usage.completion_tokens > 0


def test_n_seed_logprobs(client):
    r = chat(client, n=2, temperature=1.0, seed=5, logprobs=True, top_logprobs=3, extra_body={})
    assert [c.index for c in r.choices] == [0, 1]
    lp = r.choices[0].logprobs.content
    assert len(lp) == r.usage.completion_tokens // 2 or len(lp) > 0
    assert all(len(t.top_logprobs) == 3 for t in lp)
    again = chat(client, n=2, temperature=1.0, seed=5, extra_body={})
    assert again.choices[0].message.reasoning_content == r.choices[0].message.reasoning_content


def test_completions_and_models(client):
    r = client.completions.create(
        model="qthink-test", prompt="Once upon a time", max_tokens=5, temperature=0, logprobs=2
    )
    assert r.choices[0].text and len(r.choices[0].logprobs.tokens) == 5 and r.usage.completion_tokens == 5
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="qthink-test", prompt="Once upon a time", max_tokens=5, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == r.choices[0].text
    assert [m.id for m in client.models.list().data] == ["qthink-test"]


def test_forced_tool_call_whole_and_streamed(client):
    choice = {"type": "function", "function": {"name": "get_time"}}
    r = chat(client, tools=TOOLS, tool_choice=choice, max_tokens=80)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    call = c.message.tool_calls[0]
    assert call.function.name == "get_time" and isinstance(json.loads(call.function.arguments), dict)
    assert call.id.startswith("call_")
    names, args = [], ""
    for chunk in chat(client, tools=TOOLS, tool_choice=choice, max_tokens=80, stream=True):
        for ch in chunk.choices:
            for tc in ch.delta.tool_calls or []:
                if tc.function.name:
                    names.append(tc.function.name)
                args += tc.function.arguments or ""
    assert names == ["get_time"] and isinstance(json.loads(args), dict)


def test_required_parameterless_tool_gets_empty_object(client):
    tools = [TOOLS[1]]
    r = chat(client, tools=tools, tool_choice="required", max_tokens=60)
    assert r.choices[0].message.tool_calls[0].function.arguments == "{}"


def test_tool_choice_none_is_not_parsed(client):
    r = chat(client, tools=TOOLS, tool_choice="none")
    assert not r.choices[0].message.tool_calls


def test_structured_json_schema(client):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["A", "B"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    r = chat(
        client,
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "mc", "schema": schema}},
    )
    assert json.loads(r.choices[0].message.content)["answer"] in ("A", "B")


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"top_p": 1.5}, "top_p"),
        ({"model": "gpt-4"}, "not served here"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 10_000}, "context"),
        ({"messages": [{"role": "user", "content": "x" * 4000}]}, "context"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "strin"}}}},
            "structured",
        ),
    ],
)
def test_bad_requests_are_400(client, kw, needle):
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, **kw)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    "kw, param",
    [
        ({"max_tokens": 10_000}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x " * 1000}]}, "messages"),
    ],
)
def test_context_errors_name_the_field_and_code(client, kw, param):
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, **kw)
    assert err.value.body["param"] == param and err.value.body["code"] == "context_length_exceeded"


def test_an_internal_value_error_is_a_500_not_a_client_error(server):
    def internal_bug():
        raise ValueError("a bug inside the server")

    server.app.add_api_route("/internal-bug", internal_bug)
    r = httpx.get(server.url + "/internal-bug")
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "a bug inside" not in r.text


def test_tokenize_detokenize_health_metrics_version(server):
    with httpx.Client(base_url=server.url) as http:
        toks = http.post("/tokenize", json={"prompt": "hello world"}).json()
        assert toks["count"] == len(toks["tokens"]) == 2
        assert http.post("/detokenize", json={"tokens": toks["tokens"]}).json()["prompt"] == "hello world"
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/version").status_code == 200
        metrics = http.get("/metrics").text
        for name in (
            "time_to_first_token_seconds",
            "kv_cache_usage_perc",
            "prefix_cache_hit_rate",
            "num_requests_running",
            "generation_tokens_total",
        ):
            assert "qthink:" + name in metrics
        assert "/v1/chat/completions" in http.get("/openapi.json").json()["paths"]


def test_disconnect_mid_stream_frees_blocks(server):
    body = {"model": "qthink-test", "messages": ASK, "max_tokens": 400, "stream": True, "ignore_eos": True}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            for i, _ in enumerate(resp.iter_lines()):
                if i > 5:
                    break
    import time

    deadline = time.time() + 10
    stats = server.engine.stats()
    while (
        stats["kv_blocks_free"] != stats["kv_blocks_total"] or stats["num_running"]
    ) and time.time() < deadline:
        time.sleep(0.1)
        stats = server.engine.stats()
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"] and stats["num_running"] == 0


def test_api_key(tiny_model_dir):
    with RunningServer(tiny_model_dir, api_key="s3cret", kv_cache_memory=2 << 20) as s:
        bad = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.models.list().data[0].id == "qthink-test"
        assert httpx.get(s.url + "/health").status_code == 200
        assert httpx.get(s.url + "/metrics").status_code == 401


def test_template_kwargs_cannot_switch_off_protections(client):
    with pytest.raises(openai.BadRequestError, match="may not set allow_special_tokens_in_content"):
        chat(client, extra_body={"chat_template_kwargs": {"allow_special_tokens_in_content": True}})


def test_required_without_parallel_calls_makes_exactly_one(client):
    r = chat(client, tools=[TOOLS[1]], tool_choice="required", parallel_tool_calls=False, max_tokens=120)
    assert len(r.choices[0].message.tool_calls) == 1 and r.choices[0].finish_reason == "tool_calls"
