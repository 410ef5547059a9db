"""The server logs one line per request: method, path, status, tokens and time."""

import logging
import re

import httpx
import openai
import pytest

from tests.helpers.server import RunningServer


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with RunningServer(tiny_model_dir) as running:
        yield running


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "qthink.requests"]


def test_one_line_per_request_with_status_tokens_and_time(server, caplog):
    caplog.set_level(logging.INFO, logger="qthink.requests")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    messages = [{"role": "user", "content": "Hi"}]
    client.chat.completions.create(model="qthink-test", messages=messages, max_tokens=5, temperature=0)
    stream = client.chat.completions.create(
        model="qthink-test", messages=messages, max_tokens=7, temperature=0, stream=True
    )
    list(stream)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="qthink-test", messages=messages, max_tokens=10**6)
    httpx.get(server.url + "/health")
    logged = lines(caplog)
    assert len(logged) == 4, logged
    plain, streamed, refused, health = logged
    pattern = (
        r'127\.0\.0\.1 "POST /v1/chat/completions" 200, (\d+) prompt \+ (\d+) completion tokens, \d+\.\d\d s'
    )
    prompt, completion = map(int, re.fullmatch(pattern, plain).groups())
    assert prompt > 5 and completion == 5
    assert re.fullmatch(pattern, streamed).groups() == (str(prompt), "7")
    assert re.fullmatch(r'127\.0\.0\.1 "POST /v1/chat/completions" 400, \d+\.\d\d s', refused)
    assert re.fullmatch(r'127\.0\.0\.1 "GET /health" 200, \d+\.\d\d s', health)
