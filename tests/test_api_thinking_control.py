"""One thinking budget and its controls: reasoning_effort, end_thinking, and the metrics that count them."""

import json

import httpx
import pytest

from qthink.server.thinking_budget import EARLY_STOP_TEXT, EffortBudgets
from tests.helpers.server import RunningServer


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with RunningServer(tiny_model_dir, max_model_len=1024, kv_cache_memory=16 << 20) as s:
        yield s


def test_end_thinking_closes_a_streaming_requests_thinking(server):
    body = {
        "model": "qthink-test",
        "messages": [{"role": "user", "content": "think long"}],
        "max_tokens": 900,
        "temperature": 0,
        "stream": True,
    }
    reasoning, content, ended = "", "", None
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as r:
        request_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            assert chunk["id"] == request_id
            delta = chunk["choices"][0]["delta"]
            reasoning += delta.get("reasoning_content") or ""
            content += delta.get("content") or ""
            if ended is None:  # random weights would think to the token limit
                ended = httpx.post(f"{server.url}/v1/requests/{request_id}/end_thinking")
                assert ended.status_code == 200 and ended.json()["ended"]
            finish = chunk["choices"][0]["finish_reason"]
    assert reasoning.endswith(EARLY_STOP_TEXT) and finish in ("stop", "length")
    metrics = httpx.get(server.url + "/metrics").text
    assert _value(metrics, "qthink:thinking_ended_on_request_total") >= 1
    assert httpx.post(f"{server.url}/v1/requests/{request_id}/end_thinking").status_code == 404


def test_end_thinking_of_an_unknown_request_is_404(server):
    r = httpx.post(server.url + "/v1/requests/nope/end_thinking")
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]


def chat(server, **fields) -> httpx.Response:
    body = {
        "model": "qthink-test",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 40,
        **fields,
    }
    return httpx.post(server.url + "/v1/chat/completions", json={"temperature": 0, **body}, timeout=120)


def test_reasoning_effort_is_a_thinking_budget_in_chat_completions(server):
    minimal = chat(server, reasoning_effort="minimal", max_tokens=300).json()
    assert minimal["thinking_budget"]["max_thinking_tokens"] == 256
    off = chat(server, reasoning_effort="none").json()
    assert off["thinking_budget"]["disabled"] and off["thinking_budget"]["closed_by"] == "thinking_budget"
    assert off["choices"][0]["message"]["reasoning_content"] == EARLY_STOP_TEXT
    explicit = chat(server, reasoning_effort="high", max_thinking_tokens=3).json()
    assert explicit["thinking_budget"]["max_thinking_tokens"] == 3  # the explicit budget wins
    bad = chat(server, reasoning_effort="extreme")
    assert bad.status_code == 400 and "reasoning_effort" in bad.json()["error"]["message"]
    assert "thinking_budget" not in chat(server).json()  # nothing asked, nothing to report


def _value(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text; labels must match (model_name is implied)."""
    want = {"model_name": "qthink-test", **labels}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(p.split("=", 1) for p in line[len(name) + 1 : line.index("}")].split(","))
            if all(found.get(k) == f'"{v}"' for k, v in want.items()):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {want} not in the metrics")


def test_metrics_under_vllms_names_and_thinking_metrics(server):
    chat(server, max_thinking_tokens=2, max_tokens=60)
    text = httpx.get(server.url + "/metrics").text
    for prefix in ("qthink:", "vllm:"):
        assert _value(text, prefix + "num_requests_running") == 0
        assert _value(text, prefix + "num_requests_waiting") == 0
        assert 0 <= _value(text, prefix + "kv_cache_usage_perc") <= 1
        assert _value(text, prefix + "prompt_tokens_total") > 0
        assert _value(text, prefix + "generation_tokens_total") > 0
        assert _value(text, prefix + "request_success_total", finished_reason="length") >= 1
        for histogram in (
            "time_to_first_token_seconds",
            "inter_token_latency_seconds",
            "e2e_request_latency_seconds",
        ):
            assert _value(text, prefix + histogram + "_count") >= 1
        assert _value(text, prefix + "request_generation_tokens_count") >= 1
    assert _value(text, "vllm:gpu_cache_usage_perc") == _value(text, "vllm:kv_cache_usage_perc")
    assert _value(text, "vllm:time_per_output_token_seconds_count") >= 1
    assert _value(text, "qthink:thinking_budget_hits_total") >= 1
    assert _value(text, "qthink:request_reasoning_tokens_count") >= 1
    assert _value(text, "qthink:time_to_answer_seconds_count") >= 1


def test_effort_budgets_parse_the_server_flag():
    table = EffortBudgets.parse("low=10, high=unlimited,ultra=99").table()
    assert table["none"] == 0 and table["low"] == 10 and table["high"] is None and table["ultra"] == 99
    assert table["medium"] == 8192  # the defaults stay for levels not given
    for bad in ("low", "low=many", "none=5", "=3"):
        with pytest.raises(ValueError, match="LEVEL=TOKENS"):
            EffortBudgets.parse(bad)
