"""The server with speculative decoding and a loop guard: request field, response mark, metrics."""

import httpx
import openai
import pytest

from tests.helpers.server import RunningServer

SPEC = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1}


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with RunningServer(tiny_model_dir, speculative_config=SPEC, loop_guard=True) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none")


def _chat(client, **extra):
    return client.chat.completions.create(
        model="qthink-test",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=120,
        temperature=0,
        extra_body=extra,
    )


def test_loop_guard_field_closes_the_thinking_and_says_so(client):
    """The tiny random model repeats itself: the guard (per request, or the server's default)
    closes the thinking with the early-stop phrase, and the response says it did."""
    tight = _chat(client, loop_guard={"window": 8, "count": 3}, max_thinking_tokens=1000)
    assert tight.thinking_budget["closed_by"] == "loop_guard"
    assert tight.choices[0].message.reasoning_content.endswith("thinking directly now.")
    default = _chat(client, max_thinking_tokens=1000)
    assert default.thinking_budget["closed_by"] == "loop_guard"  # the server's --loop-guard
    off = _chat(client, loop_guard=False, max_thinking_tokens=1000)
    assert off.thinking_budget["closed_by"] is None
    assert "thinking directly now" not in off.choices[0].message.reasoning_content


def test_bad_loop_guard_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError, match="loop_guard"):
        _chat(client, loop_guard={"size": 3})


def test_metrics_count_drafts_and_loop_guard_hits(client, server):
    _chat(client)
    text = httpx.get(server.url + "/metrics").text
    for name in ("spec_decode_num_drafts", "spec_decode_num_draft_tokens", "spec_decode_num_accepted_tokens"):
        for prefix in ("qthink:", "vllm:"):
            line = next(x for x in text.splitlines() if x.startswith(f"{prefix}{name}_total{{"))
            assert float(line.split()[-1]) > 0
    assert "qthink:spec_decode_acceptance_rate{" in text
    hits = next(x for x in text.splitlines() if x.startswith("qthink:thinking_loop_guard_hits_total{"))
    assert float(hits.split()[-1]) >= 1
