"""The thinking-loop guard alone: loops fire after `count` repeats, ordinary text never does."""

import random

import pytest

from qthink.engine.loop_guard import LoopGuard, LoopGuardConfig


def _first_fire(guard: LoopGuard, tokens: list[int]) -> int | None:
    for i, t in enumerate(tokens):
        if guard.observe(t):
            return i + 1
    return None


def test_a_repeated_span_fires_on_its_count_th_appearance():
    span = list(range(100, 110))
    prefix = [1, 2, 3, 4, 5]
    guard = LoopGuard(LoopGuardConfig(window=8, count=3))
    fired = _first_fire(guard, prefix + span * 5)
    # the span's first 8 tokens are seen at the end of repeat 1, then again 10 tokens later, ...
    assert fired == len(prefix) + 8 + 2 * 10
    assert guard.period == 10


def test_varied_text_and_repeats_below_count_do_not_fire():
    rng = random.Random(0)
    text = [rng.randrange(1000) for _ in range(5000)]
    assert _first_fire(LoopGuard(LoopGuardConfig(window=16, count=2)), text) is None
    span = [rng.randrange(1000) for _ in range(20)]
    assert _first_fire(LoopGuard(LoopGuardConfig(window=16, count=4)), span * 3 + text[:100]) is None


def test_one_token_repeated_is_a_loop():
    guard = LoopGuard(LoopGuardConfig(window=4, count=3))
    assert _first_fire(guard, [9] * 10) == 6
    assert guard.period == 1


def test_config_parsing():
    assert LoopGuardConfig.parse(None) is None and LoopGuardConfig.parse(False) is None
    assert LoopGuardConfig.parse(True) == LoopGuardConfig()
    assert LoopGuardConfig.parse({"window": 32}) == LoopGuardConfig(32, 4)
    with pytest.raises(ValueError, match="not size"):
        LoopGuardConfig.parse({"size": 3})
    with pytest.raises(ValueError, match="count >= 2"):
        LoopGuardConfig.parse({"count": 1})
    with pytest.raises(ValueError, match="must be true"):
        LoopGuardConfig.parse("yes")


def test_engine_closes_looping_thinking_and_marks_it(tiny_model_dir):
    """The tiny random model writes one token forever: the guard ends the thinking with the
    early-stop phrase, the answer follows, and the output and metrics say why; the same
    text comes out with n-gram speculation verifying the loop several tokens at a time."""
    from qthink.engine.offline import LLM
    from qthink.engine.sampling_params import THINKING_EARLY_STOP, SamplingParams
    from qthink.tokenizer import Tokenizer

    vocab = Tokenizer.from_pretrained(tiny_model_dir)
    THINK_START_ID, THINK_END_ID = vocab.token_to_id("<think>"), vocab.token_to_id("</think>")
    prompt = [1000, 2000, THINK_START_ID]
    guard = {"window": 8, "count": 3}
    texts = []
    for spec in (None, {"num_speculative_tokens": 4, "prompt_lookup_min": 1}):
        llm = LLM(str(tiny_model_dir), kv_cache_memory=4 << 20, max_model_len=256, speculative_config=spec)
        out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=60, loop_guard=guard))[
            0
        ].outputs[0]
        assert out.thinking_cut_by == "loop_guard"
        assert THINK_END_ID in out.token_ids
        assert THINKING_EARLY_STOP.strip().removesuffix("</think>").strip() in out.reasoning_content
        assert llm.engine.stats()["loop_guard_total"] == 1
        off = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=60, loop_guard=False))[
            0
        ].outputs[0]
        assert off.thinking_cut_by is None and THINK_END_ID not in off.token_ids
        texts.append(out.token_ids)
    assert texts[0] == texts[1]
    # the engine's default applies when a request says nothing
    llm = LLM(str(tiny_model_dir), kv_cache_memory=4 << 20, max_model_len=256, loop_guard=guard)
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=60))[0].outputs[0]
    assert out.thinking_cut_by == "loop_guard"


def test_trace_marks_thinking_closed_by_the_loop_guard(tiny_model_dir):
    from qthink.engine.offline import LLM
    from qthink.engine.sampling_params import SamplingParams
    from qthink.viewer.trace import trace_from_output

    llm = LLM(str(tiny_model_dir), kv_cache_memory=4 << 20, max_model_len=256)
    think = llm.get_tokenizer().token_to_id("<think>")
    out = llm.generate([[1000, 2000, think]], SamplingParams(temperature=0, max_tokens=40, loop_guard=True))[
        0
    ]
    assert out.outputs[0].thinking_cut_by is None  # window 64: not reached in 40 tokens
    out = llm.generate(
        [[1000, 2000, think]],
        SamplingParams(temperature=0, max_tokens=40, loop_guard={"window": 4, "count": 3}),
    )[0]
    trace = trace_from_output([{"role": "user", "content": "hi"}], out, llm.get_tokenizer())
    assert trace.answer.thinking_closed_by == "loop_guard"
