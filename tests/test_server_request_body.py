"""Request bodies that are not JSON text: lone surrogates and syntax errors are 400s a person can read."""

import httpx
import pytest

from tests.helpers.server import RunningServer

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


@pytest.mark.parametrize(
    "field, value",
    [
        ("logit_bias", {"9707": 100}),
        ("best_of", 3),
        ("use_beam_search", True),
        ("prompt_logprobs", 1),
        ("continue_final_message", True),
        ("functions", [{"name": "f"}]),
        ("cache_salt", "tenant-a"),
    ],
)
def test_fields_that_would_change_the_answer_are_refused_by_name(server, field, value):
    for path in ("/v1/chat/completions", "/v1/completions"):
        body = {
            "messages": [{"role": "user", "content": "hi"}],
            "prompt": "hi",
            "max_tokens": 2,
            field: value,
        }
        r = httpx.post(server.url + path, json=body, timeout=30)
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        assert error["param"] == field and error["message"].startswith(f"{field} is not supported: ")


def test_fields_left_off_or_without_effect_are_accepted(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    body |= {"logit_bias": None, "best_of": 1, "use_beam_search": False, "echo": False}
    body |= {"user": "u1", "metadata": {"k": "v"}, "store": False, "service_tier": "auto"}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text


def test_stream_options_it_does_not_know_are_refused(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}
    body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options.continuous_usage_stats"
