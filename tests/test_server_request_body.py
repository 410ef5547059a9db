"""Request bodies that are not JSON text: lone surrogates and syntax errors are 400s a person can read."""

import httpx
import pytest

from tests.server_harness import RunningServer

LONE_HIGH = '{"model": "qthink-test", "messages": [{"role": "user", "content": "hi \\ud800 there"}]}'


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with RunningServer(tiny_model_dir) as running:
        yield running


def body_routes(server) -> list[str]:
    """Every route that reads a JSON body."""
    return [route.path for route in server.app.routes if getattr(route, "body_field", None) is not None]


def post(server, path: str, body: bytes | str) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    return httpx.post(server.url + path, content=body, headers=headers, timeout=30)


def test_every_post_route_refuses_a_lone_surrogate(server):
    routes = body_routes(server)
    assert "/v1/chat/completions" in routes and "/tokenize" in routes
    for path in routes:
        r = post(server, path, LONE_HIGH)
        assert r.status_code == 400, (path, r.status_code, r.text)
        error = r.json()["error"] if "error" in r.json() else r.json()
        assert "surrogate" in str(error), (path, r.text)


@pytest.mark.parametrize(
    "content, where",
    [
        ('"\\udc00 low half alone"', "messages.0.content"),
        ('"pair then half \\ud83d\\ude00\\ud83d"', "messages.0.content"),
        ('[{"type": "text", "text": "\\ud800"}]', "messages.0.content.0.text"),
    ],
)
def test_the_error_names_where_the_surrogate_is(server, content, where):
    body = '{"messages": [{"role": "user", "content": ' + content + '}], "max_tokens": 2}'
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == where
    assert where in error["message"] and "surrogate" in error["message"]


def test_raw_surrogate_bytes_are_refused(server):
    body = '{"prompt": "x", "messages": null}'.replace("x", "a\udfff").encode("utf-8", "surrogatepass")
    r = post(server, "/tokenize", body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text


def test_a_valid_pair_is_one_character(server):
    body = '{"prompt": "rocket \\ud83d\\ude80"}'
    r = post(server, "/tokenize", body)
    assert r.status_code == 200, r.text
    assert "🚀" in server.engine.tokenizer.decode(r.json()["tokens"])


@pytest.mark.parametrize(
    "body, reason, line, column",
    [
        ('{"messages": [\n  {"role": "user" "content": "hi"}\n]}', "Expecting ',' delimiter", 2, 19),
        ('{"messages": [{"role": "user", "content": "hi"}],}', "Expecting property name", 1, 50),
        ('{"prompt": "unterminated', "Unterminated string", 1, 12),
    ],
    ids=["missing comma", "trailing comma", "unterminated string"],
)
def test_malformed_json_says_what_and_where(server, body, reason, line, column):
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] is None
    assert error["type"] == "invalid_request_error"
    message = error["message"]
    assert message.startswith("the request body is not valid JSON: " + reason), message
    assert f"line {line}, column {column}" in message, message
    assert "JSON decode error" not in message
