"""POST /v1/requests/{id}/end_thinking: a running request stops thinking and answers."""

import json

import httpx
import pytest

from qthink.server.thinking_budget import EARLY_STOP_TEXT
from tests.server_harness import RunningServer


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
    assert httpx.post(f"{server.url}/v1/requests/{request_id}/end_thinking").status_code == 404


def test_end_thinking_of_an_unknown_request_is_404(server):
    r = httpx.post(server.url + "/v1/requests/nope/end_thinking")
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
