"""Tokenizer and chat template: identical to transformers, incremental decoding, sandboxing."""

import json

import pytest
from transformers import AutoTokenizer

from qthink.tokenizer import ChatTemplateError, IncrementalDetokenizer, Tokenizer, shipped_templates

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Current time in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "ping",
            "description": "No parameters",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]
CALL = {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": {"city": "上海"}}}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "What is 2+2?"}],
    "system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    "multi-turn-reasoning-content": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet back."},
        {"role": "user", "content": "2+2?"},
    ],
    "multi-turn-inline-think": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nGreet.\n</think>\n\nHello!"},
        {"role": "user", "content": "Again"},
    ],
    "tool-loop": [
        {"role": "system", "content": "You tell time."},
        {"role": "user", "content": "Time in Shanghai and a ping?"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "Call both.",
            "tool_calls": [
                CALL,
                {"id": "c2", "type": "function", "function": {"name": "ping", "arguments": {}}},
            ],
        },
        {"role": "tool", "content": "12:00"},
        {"role": "tool", "content": "pong"},
    ],
    "chinese-emoji": [{"role": "user", "content": "解释量子计算基本原理 🚀"}],
}


@pytest.fixture(scope="module")
def hf(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module", params=["qwen3", "thinking-2507"])
def pair(request, tokenizer_dir, hf):
    ours = Tokenizer.from_pretrained(tokenizer_dir, chat_template=request.param)
    return ours, ours.chat_template


@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("gen", [True, False])
def test_template_matches_transformers(pair, hf, name, gen):
    ours, template = pair
    messages = CONVERSATIONS[name]
    tools = TOOLS if name == "tool-loop" else None
    kw = dict(tools=tools, add_generation_prompt=gen, chat_template=template)
    expected = hf.apply_chat_template(messages, tokenize=False, **kw)
    assert (
        ours.apply_chat_template(messages, tools=tools, add_generation_prompt=gen, tokenize=False) == expected
    )
    ids = ours.apply_chat_template(messages, tools=tools, add_generation_prompt=gen)
    assert ids == hf(expected, add_special_tokens=False)["input_ids"]


def test_enable_thinking_false(tokenizer_dir, hf):
    ours = Tokenizer.from_pretrained(tokenizer_dir, chat_template="qwen3")
    conv = CONVERSATIONS["single"]
    text = ours.apply_chat_template(conv, add_generation_prompt=True, tokenize=False, enable_thinking=False)
    assert text == hf.apply_chat_template(
        conv, add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_2507_generation_prompt_opens_thinking(tiny_model_dir):
    tok = Tokenizer.from_pretrained(tiny_model_dir)  # the checkpoint's chat_template.jinja
    text = tok.apply_chat_template(CONVERSATIONS["single"], add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n<think>\n")


def test_string_tool_arguments_render_like_objects(tokenizer_dir):
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    as_dict = CONVERSATIONS["tool-loop"]
    as_string = json.loads(json.dumps(as_dict))
    for call in as_string[2]["tool_calls"]:
        call["function"]["arguments"] = json.dumps(call["function"]["arguments"], ensure_ascii=False)
    assert tok.apply_chat_template(as_string, tools=TOOLS, tokenize=False) == tok.apply_chat_template(
        as_dict, tools=TOOLS, tokenize=False
    )


def test_content_parts_are_flattened(tokenizer_dir):
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}]
    assert tok.apply_chat_template(parts, tokenize=False) == tok.apply_chat_template(
        [{"role": "user", "content": "Hello"}], tokenize=False
    )


def test_template_injection_is_sandboxed(tokenizer_dir):
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    text = tok.apply_chat_template([{"role": "user", "content": evil}], tokenize=False)
    assert evil in text  # content is data, never template source
    bad = Tokenizer.from_pretrained(tokenizer_dir, chat_template="{{ ''.__class__.__mro__ }}")
    with pytest.raises(Exception, match="unsafe|access"):
        bad.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)


def test_unknown_template_name(tokenizer_dir):
    with pytest.raises(ChatTemplateError, match="thinking-2507"):
        Tokenizer.from_pretrained(tokenizer_dir, chat_template="no-such-template")
    assert {"qwen3", "thinking-2507"} <= set(shipped_templates())


@pytest.mark.parametrize("text", ["解释量子计算基本原理", "emoji 🚀🧠 mixed 中文 and text", "é à ü 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"])
def test_incremental_detokenizer_never_breaks_utf8(tokenizer_dir, text):
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.push([i]) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text == tok.decode(ids)


def test_special_tokens(tokenizer_dir):
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    assert tok.eos_token_id == 151645
    assert tok.encode("</think>") == [151668]
    assert tok.decode([151668, 151645], skip_special_tokens=True) == "</think>"
