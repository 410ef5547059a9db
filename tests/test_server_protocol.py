"""Request models: the history a client sends back renders as the 2507 template expects."""

import pytest
from pydantic import ValidationError

from qthink.errors import RequestError
from qthink.server.errors import APIError
from qthink.server.params import tool_choice_spec
from qthink.server.protocol import ChatCompletionRequest
from qthink.tokenizer import Tokenizer

CALL = {"id": "call_1", "type": "function", "function": {"name": "ping", "arguments": "{}"}}


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return Tokenizer.from_pretrained(tokenizer_dir, chat_template="thinking-2507")


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_history_thinking_is_dropped_before_the_last_question_and_kept_in_the_tool_loop(tok, field):
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer", field: "OLD THOUGHT"},
        {"role": "user", "content": "what time is it?"},
        {"role": "assistant", "content": "", field: "LOOP THOUGHT", "tool_calls": [CALL]},
        {"role": "tool", "content": "12:00", "tool_call_id": "call_1"},
    ]
    req = ChatCompletionRequest(messages=messages)
    prompt = tok.apply_chat_template(
        [m.for_template() for m in req.messages], add_generation_prompt=True, tokenize=False
    )
    assert "OLD THOUGHT" not in prompt
    assert "<think>\nLOOP THOUGHT\n</think>\n\n<tool_call>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")


def test_unknown_fields_pass_and_bad_types_are_refused():
    req = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], some_vendor_flag=True)
    assert req.model_extra == {"some_vendor_flag": True}
    for bad in ({"n": "two"}, {"max_tokens": 0}, {"top_p": 1.5}, {"messages": []}, {"stream": "maybe"}):
        with pytest.raises(ValidationError):
            ChatCompletionRequest(**{"messages": [{"role": "user", "content": "hi"}], **bad})


@pytest.mark.parametrize(
    "choice, needle",
    [
        ("required", "needs `tools`"),
        ({"type": "function", "function": {"name": "ping"}}, "needs `tools`"),
        ("sometimes", "must be none, auto, required"),
    ],
)
def test_tool_choice_that_cannot_be_honoured_is_refused(tok, choice, needle):
    req = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], tool_choice=choice)
    with pytest.raises(APIError) as err:
        tool_choice_spec(req, tok)
    assert err.value.status == 400 and needle in err.value.message


def test_tool_choice_naming_an_unknown_tool_is_a_request_error(tok):
    tools = [{"type": "function", "function": {"name": "ping", "parameters": {"type": "object"}}}]
    choice = {"type": "function", "function": {"name": "pong"}}
    req = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], tools=tools, tool_choice=choice)
    with pytest.raises(RequestError, match="pong"):  # the app answers a RequestError with a 400
        tool_choice_spec(req, tok)
