"""The batched sampler against straightforward per-row reference computations, and stop strings."""

import math

import pytest
import torch

from qthink.engine.sampler import SamplingBatch, apply_penalties, filter_logits, sample
from qthink.engine.sampling_params import SamplingParams
from qthink.engine.stop import StopStringMatcher

V = 50


def batch(params, prompts=None, outputs=None, generators=None, eos=None):
    n = len(params)
    return SamplingBatch.build(
        params,
        prompts or [[1, 2]] * n,
        outputs or [[]] * n,
        generators or [None] * n,
        V,
        "cpu",
        eos_ids=eos or [(0,)] * n,
    )


def p(**kw):
    return SamplingParams(**{"temperature": 1.0, "top_p": 1.0, "top_k": 0, **kw})


def test_penalties_follow_vllm_definitions():
    logits = torch.randn(1, V, generator=torch.Generator().manual_seed(0)) * 3
    prompt, output = [3, 4], [5, 5, 6, 3]
    params = p(presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=1.3)
    got = apply_penalties(logits.clone(), batch([params], [prompt], [output]))[0]
    expected = logits[0].clone().tolist()
    for t in set(prompt + output):  # repetition: prompt and output, sign-aware
        expected[t] = expected[t] / 1.3 if expected[t] > 0 else expected[t] * 1.3
    for t in set(output):  # presence and frequency: output only
        expected[t] -= 0.5 + 0.25 * output.count(t)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)


def kept(logits_row, **kw):
    out = filter_logits(logits_row[None].clone(), batch([p(**kw)]))[0]
    return set(torch.nonzero(out > float("-inf")).flatten().tolist())


def test_top_k_top_p_min_p_against_reference():
    logits = torch.randn(V, generator=torch.Generator().manual_seed(1)) * 2
    order = torch.argsort(logits, descending=True).tolist()
    probs = torch.softmax(logits, -1)
    assert kept(logits, top_k=5) == set(order[:5])
    mass, nucleus = 0.0, set()
    for t in order:  # smallest prefix whose mass reaches top_p
        nucleus.add(t)
        mass += probs[t].item()
        if mass >= 0.8:
            break
    assert kept(logits, top_p=0.8) == nucleus
    assert kept(logits, min_p=0.2) == {t for t in range(V) if probs[t] >= 0.2 * probs.max()}
    assert kept(logits, temperature=0.5, top_k=3) == set(order[:3])


def test_greedy_logprobs_and_ranks():
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(2))
    res = sample(logits, batch([p(temperature=0, logprobs=4)] * 3))
    assert res.token_ids.tolist() == logits.argmax(-1).tolist()
    assert res.ranks.tolist() == [1, 1, 1]
    assert torch.allclose(res.logprobs, torch.log_softmax(logits, -1).max(-1).values)
    assert res.top_ids.shape == (3, 4) and (res.top_ids[:, 0] == res.token_ids).all()


def test_seeded_row_is_independent_of_the_batch():
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(3))
    alone = sample(logits[:1], batch([p()], generators=[torch.Generator().manual_seed(9)]))
    mixed = sample(logits, batch([p()] * 4, generators=[torch.Generator().manual_seed(9), None, None, None]))
    assert alone.token_ids[0] == mixed.token_ids[0]


def test_min_tokens_blocks_eos_and_stop_ids():
    logits = torch.zeros(1, V)
    logits[0, 0] = 100.0  # EOS would win
    logits[0, 7] = 90.0
    params = p(temperature=0, min_tokens=3, stop_token_ids=[7])
    res = sample(logits, batch([params], outputs=[[1]], eos=[(0,)]))
    assert res.token_ids.item() not in (0, 7)
    assert sample(logits, batch([params], outputs=[[1, 2, 3]], eos=[(0,)])).token_ids.item() == 0


def test_sampled_frequencies_follow_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0] + [-50.0] * (V - 5)])
    params = p(temperature=0.8, top_k=4)
    gen = torch.Generator().manual_seed(4)
    draws = [sample(logits, batch([params], generators=[gen])).token_ids.item() for _ in range(3000)]
    target = torch.softmax(logits[0, :4] / 0.8, -1)
    for t in range(4):
        freq = draws.count(t) / len(draws)
        assert abs(freq - target[t].item()) < 4 * math.sqrt(target[t] * (1 - target[t]) / len(draws))
    assert 4 not in draws


@pytest.mark.parametrize("deltas", [["Hello wor", "ld! STOP", " more"], ["He", "llo world! S", "TO", "P"]])
def test_stop_string_across_deltas(deltas):
    m = StopStringMatcher(["STOP", "never"])
    emitted = ""
    for d in deltas:
        text, stopped, matched = m.feed(d)
        emitted += text
        if stopped:
            break
    assert emitted == "Hello world! " and matched == "STOP"


def test_stop_string_included_and_earliest_wins():
    m = StopStringMatcher(["cd", "bcd"], include_stop_str_in_output=True)
    assert m.feed("abcde") == ("abcd", True, "bcd")
    m = StopStringMatcher(["xyz"])
    assert m.feed("abx") == ("ab", False, None)
    assert m.flush() == "x"
