"""The thinking format: one split rule (the first </think>) whole, streamed and per token."""

import pytest

from qthink.parsing.thinking import ThinkingFormat
from qthink.tokenizer import IncrementalDetokenizer


def token_deltas(tok, ids):
    detok = IncrementalDetokenizer(tok)
    return [detok.push([i]) for i in ids] + [detok.finish()]


def streamed(fmt, deltas, thinking):
    stream = fmt.stream(thinking)
    parts = [stream.feed(d, final=i == len(deltas) - 1) for i, d in enumerate(deltas)]
    return "".join(r for r, _ in parts), "".join(c for _, c in parts)


CASES = [
    # (generated text, prompt opened <think>, expected (reasoning, content))
    ("A</think>B</think>C", True, ("A", "B</think>C")),
    ("A\n</think>\n\nB\n</think>\n\nC", True, ("A", "B\n</think>\n\nC")),
    ("no end in sight", True, ("no end in sight", None)),
    ("</think>\n\nanswer only", True, ("", "answer only")),
    ("</think>", True, ("", None)),
    ("", True, ("", None)),
    ("<think>\nmodel opened\n</think>\n\nyes", False, ("model opened", "yes")),
    ("<think>\nnever closed", False, ("never closed", None)),
    ("plain answer", False, (None, "plain answer")),
    ("stray </think> stays text", False, (None, "stray </think> stays text")),
    ("先想一想 🚀\n</think>\n\n答案", True, ("先想一想 🚀", "答案")),
]


@pytest.mark.parametrize("text, thinking, expected", CASES)
def test_stream_token_by_token_equals_whole_split(tok, fmt, text, thinking, expected):
    assert fmt.split(text, thinking) == expected
    reasoning, content = streamed(fmt, token_deltas(tok, tok.encode(text)), thinking)
    assert (reasoning, content or None) == (expected[0] or "", expected[1])


@pytest.mark.parametrize("text, thinking, expected", CASES)
def test_stream_char_by_char_equals_whole_split(fmt, text, thinking, expected):
    """Markers cut at every position across deltas ("</th" + "ink>")."""
    reasoning, content = streamed(fmt, list(text) or [""], thinking)
    assert (reasoning, content or None) == (expected[0] or "", expected[1])


def test_end_marker_split_across_deltas(fmt):
    assert streamed(fmt, ["abc</th", "in", "k>\n", "\nanswer</thi", "nk>more"], True) == (
        "abc",
        "answer</think>more",
    )


@pytest.mark.parametrize("text, thinking, expected", CASES)
def test_token_parts_and_reasoning_tokens_follow_the_same_rule(tok, fmt, text, thinking, expected):
    ids = tok.encode(text)
    parts = fmt.token_parts(ids, thinking)
    thinking_ids = [t for t, p in zip(ids, parts) if p]
    answer_ids = [t for t, p in zip(ids, parts) if not p]
    assert parts == sorted(parts, reverse=True), "thinking first, then the answer"
    reasoning, content = expected
    if fmt.end_id in thinking_ids:
        assert thinking_ids[-1] == fmt.end_id and thinking_ids.count(fmt.end_id) == 1
    decoded = tok.decode([t for t in thinking_ids if t not in (fmt.start_id, fmt.end_id)])
    assert decoded.strip("\n") == (reasoning or "")
    assert tok.decode(answer_ids).strip("\n") == (content or "")
    counted = len(thinking_ids) - (fmt.end_id in thinking_ids)
    assert fmt.reasoning_tokens(ids, thinking) == counted


def test_prompt_opens_thinking(tok, fmt):
    assert fmt.prompt_opens_thinking(tok.encode("<|im_start|>assistant\n<think>\n"))
    assert not fmt.prompt_opens_thinking(tok.encode("<|im_start|>assistant\n<think>\n\n</think>\n\n"))
    assert not fmt.prompt_opens_thinking(tok.encode("<|im_start|>assistant\n"))


def test_ids_come_from_the_vocabulary(tok):
    fmt = ThinkingFormat.from_tokenizer(tok)
    assert tok.decode([fmt.start_id]) == "<think>" and tok.decode([fmt.end_id]) == "</think>"

    class NoThinkingVocab:
        def token_to_id(self, token):
            return None

    plain = ThinkingFormat.from_tokenizer(NoThinkingVocab())
    assert (plain.start_id, plain.end_id) == (None, None)
    assert not plain.prompt_opens_thinking([1, 2, 3])
    assert plain.split("a</think>b", True) == ("a", "b")
