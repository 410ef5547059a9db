"""Malformed bodies on every protocol's routes are 4xx in that protocol's error shape, never 5xx."""

import httpx
import pytest

from tests.helpers.server import RunningServer

HI = [{"role": "user", "content": "hi"}]
CASES = [
    ("/v1/responses", {"input": [{"type": "message", "role": "user", "content": [1]}]}),
    ("/v1/responses", {"input": [{"type": "reasoning", "content": [1]}]}),
    ("/v1/responses", {"input": "hi", "text": {"format": 1}}),
    ("/v1/responses", {"input": [{"type": "function_call"}]}),
    (
        "/v1/messages",
        {
            "max_tokens": 4,
            "messages": [{"role": "user", "content": [{"type": "tool_result", "content": [1]}]}],
        },
    ),
    ("/v1/messages", {"max_tokens": 4, "messages": HI, "output_config": {"format": 1}}),
    ("/v1/messages", {"max_tokens": 4, "messages": HI, "context_management": {"edits": [1]}}),
    ("/v1/messages/count_tokens", {"messages": HI, "system": [1]}),
    ("/api/chat", {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": 1}]}] + HI}),
    ("/api/chat", {"messages": HI, "options": {"temperature": 50}}),
    ("/api/generate", {"prompt": "hi", "format": 1}),
]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with RunningServer(tiny_model_dir) as s:
        yield s


@pytest.mark.parametrize("path, body", CASES)
def test_malformed_bodies_are_client_errors(server, path, body):
    r = httpx.post(server.url + path, json={"model": "qthink-test", "stream": False, **body}, timeout=60)
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    if path.startswith("/v1/messages"):
        assert r.json()["type"] == "error" and error["type"] == "invalid_request_error"
    elif path.startswith("/api/"):
        assert isinstance(error, str) and error
    else:
        assert error["message"]
