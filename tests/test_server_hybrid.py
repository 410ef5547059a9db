"""A hybrid Qwen3 template served: chat_template_kwargs.enable_thinking=false gives a plain answer."""

import openai
import pytest

from tests.helpers.server import RunningServer

ASK = [{"role": "user", "content": "What is 2+2?"}]
# the random model repeats "\n\n" (stripped away) unless repetition is penalized
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}, "repetition_penalty": 5.0}


@pytest.fixture(scope="module")
def client(tiny_model_dir):
    with RunningServer(tiny_model_dir, chat_template="qwen3") as s:
        yield openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)


def chat(client, **kw):
    return client.chat.completions.create(
        model="qthink-test", messages=ASK, max_tokens=12, temperature=0, **kw
    )


def test_thinking_off_is_all_content_whole_and_streamed(client):
    r = chat(client, extra_body={**NO_THINKING, "ignore_eos": True})
    m = r.choices[0].message
    assert m.reasoning_content is None and m.content
    assert r.usage.completion_tokens_details.reasoning_tokens == 0
    reasoning, content = "", ""
    for chunk in chat(client, stream=True, extra_body={**NO_THINKING, "ignore_eos": True}):
        for c in chunk.choices:
            reasoning += getattr(c.delta, "reasoning_content", None) or ""
            content += c.delta.content or ""
    assert reasoning == "" and content == m.content
