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
