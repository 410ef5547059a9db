"""/v1/completions with a batch of prompts, as the openai client sends it, whole and streamed."""

import time

import httpx
import openai
import pytest

from tests.helpers.server import RunningServer

PROMPTS = ["Once upon a time", "The capital of France is"]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with RunningServer(tiny_model_dir) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def complete(client, prompt, **kw):
    return client.completions.create(model="qthink-test", prompt=prompt, max_tokens=6, temperature=0, **kw)


def route_body(route: str, **fields) -> dict:
    """A request saying "hi" to either endpoint."""
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    return {"model": "qthink-test", **({"prompt": "hi"} if route == "/v1/completions" else chat), **fields}


def wait_idle(engine, timeout=10.0) -> dict:
    deadline = time.monotonic() + timeout
    stats = engine.stats()
    while (stats["num_running"] or stats["kv_blocks_free"] != stats["kv_blocks_total"]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
        stats = engine.stats()
    return stats


def test_batch_gives_each_prompt_its_choices_in_order(client, tokenizer_dir):
    singles = [complete(client, p).choices[0].text for p in PROMPTS]
    r = complete(client, PROMPTS, n=2, seed=3)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [singles[0], singles[0], singles[1], singles[1]]
    alone = [complete(client, p).usage.prompt_tokens for p in PROMPTS]
    assert r.usage.prompt_tokens == sum(alone) and r.usage.completion_tokens == 4 * 6


def test_batch_streamed_equals_whole(client):
    whole = complete(client, PROMPTS, echo=True)
    texts: dict[int, str] = {}
    usage = None
    for chunk in complete(client, PROMPTS, echo=True, stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert [texts[i] for i in sorted(texts)] == [c.text for c in whole.choices]
    assert all(c.text.startswith(p) for c, p in zip(whole.choices, PROMPTS))
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_token_id_batch(client, server):
    ids = [server.engine.tokenizer.encode(p) for p in PROMPTS]
    by_ids = complete(client, ids)
    by_text = complete(client, PROMPTS)
    assert [c.text for c in by_ids.choices] == [c.text for c in by_text.choices]


def test_one_bad_prompt_refuses_the_batch_and_leaves_nothing_running(client, server):
    long_running = {"max_tokens": 300, "extra_body": {"ignore_eos": True}}
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="qthink-test", prompt=[PROMPTS[0], "word " * 600], **long_running)
    stats = wait_idle(server.engine, timeout=2)
    assert stats["num_running"] == 0 and stats["kv_blocks_free"] == stats["kv_blocks_total"]


def test_leaving_a_batch_stream_aborts_every_request(server):
    body = {"model": "qthink-test", "prompt": PROMPTS, "max_tokens": 300, "stream": True}
    body |= {"ignore_eos": True, "logprobs": 0}  # logprobs: a chunk per token, even without text
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with http.stream("POST", "/v1/completions", json=body) as resp:
            for n, _ in enumerate(resp.iter_lines()):
                if n > 6:
                    break
    stats = wait_idle(server.engine)
    assert stats["num_running"] == 0 and stats["kv_blocks_free"] == stats["kv_blocks_total"]


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_client_timing_out_on_a_whole_response_aborts_it(server, route):
    """Not streamed: a client that gives up (a timeout) must not leave a long run going."""
    body = route_body(route, max_tokens=480, ignore_eos=True)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + route, json=body, timeout=httpx.Timeout(30, read=0.5))
    stats = wait_idle(server.engine, timeout=3)
    assert stats["num_running"] == 0 and stats["kv_blocks_free"] == stats["kv_blocks_total"]


def latency_counts(server) -> dict[str, float]:
    """The sample count of each latency histogram on /metrics."""
    text = httpx.get(server.url + "/metrics").text
    counts = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("qthink:") and name.split("{")[0].endswith("_seconds_count"):
            counts[name.split("{")[0].removeprefix("qthink:")] = float(value)
    return counts


@pytest.mark.parametrize("stream", [False, True])
def test_every_request_feeds_the_latency_histograms(client, server, stream):
    before = latency_counts(server)
    r = complete(client, PROMPTS, stream=stream)
    if stream:
        list(r)
    after = latency_counts(server)
    grew = {name: after[name] - before.get(name, 0) for name in after}
    assert grew["time_to_first_token_seconds_count"] == 2
    assert grew["e2e_request_latency_seconds_count"] == 2
    assert grew["inter_token_latency_seconds_count"] == 2 * (6 - 1)  # one gap per later token


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_streams_tell_proxies_not_to_buffer(server, route):
    body = route_body(route, max_tokens=2, stream=True)
    with httpx.stream("POST", server.url + route, json=body, timeout=30) as resp:
        lines = [line for line in resp.iter_lines() if line]
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["x-accel-buffering"] == "no" and resp.headers["cache-control"] == "no-cache"
    assert lines[-1] == "data: [DONE]"
