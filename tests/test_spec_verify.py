"""Speculative decoding's pure parts: the n-gram drafter and verification (greedy, rejection)."""

import math
import random

import pytest
import torch

from qthink.config import SpeculativeConfig
from qthink.engine.sampling_params import SamplingParams
from qthink.engine.sequence import Sequence
from qthink.engine.spec.history import RequestHistory
from qthink.engine.spec.ngram import NgramDrafter
from qthink.engine.spec.rejection import rejection_sample, verify_greedy
from qthink.engine.spec.speculator import Speculator


def test_drafter_proposes_what_followed_the_longest_suffix_match():
    tokens = [1, 2, 3, 4, 5, 9, 3, 4, 6, 2, 3, 4]
    # suffix (2, 3, 4) last occurred at 1..3, followed by 5 9 3; (3, 4) alone would point at 6
    assert NgramDrafter(2, 3, 3).propose(tokens) == [5, 9, 3]
    assert NgramDrafter(2, 2, 3).propose(tokens) == [6, 2, 3]


def test_drafter_takes_the_latest_occurrence_and_needs_min_n():
    assert NgramDrafter(1, 1, 2).propose([7, 1, 7, 2, 7]) == [2, 7]
    assert NgramDrafter(2, 4, 3).propose([1, 2, 3, 4, 5]) == []


def test_drafter_continues_a_loop_past_the_end():
    assert NgramDrafter(2, 4, 5).propose([7, 8, 7, 8]) == [7, 8, 7, 8, 7]
    assert NgramDrafter(1, 4, 4).propose([5, 5]) == [5, 5, 5, 5]


def test_drafter_index_grows_incrementally():
    rng = random.Random(1)
    tokens: list[int] = []
    drafter = NgramDrafter(2, 4, 4)
    for _ in range(400):
        tokens.append(rng.randrange(6))
        assert drafter.propose(tokens) == NgramDrafter(2, 4, 4).propose(list(tokens))


def test_drafter_rejects_bad_settings():
    with pytest.raises(ValueError, match="prompt_lookup_min"):
        NgramDrafter(3, 2, 4)
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        NgramDrafter(1, 2, 0)


def test_history_drafts_what_followed_in_finished_requests():
    history = RequestHistory(2, 3, 8)
    history.add([1, 2, 3, 4, 5, 6])
    history.add([9, 3, 4, 7, 8])
    assert history.propose([0, 3, 4], 3) == [7, 8]  # the latest request with (3, 4)
    assert history.propose([2, 3, 4], 3) == [5, 6]  # the longest match wins
    assert history.propose([0, 7, 8], 3) == []  # nothing followed it
    assert history.propose([4], 3) == []  # shorter than min_n


def test_history_answers_only_a_longer_match_than_asked():
    history = RequestHistory(2, 4, 8)
    history.add([1, 2, 3, 4, 5, 6])
    assert history.propose([0, 2, 3, 4], 2, longer_than=2) == [5, 6]  # it matches 3 tokens
    assert history.propose([0, 2, 3, 4], 2, longer_than=3) == []


def test_suffix_drafting_takes_the_longer_match_of_the_sequence_and_the_history():
    config = SpeculativeConfig(method="suffix", num_speculative_tokens=2, prompt_lookup_min=2)
    speculator = Speculator(config, max_model_len=100)
    assert speculator.history is not None  # suffix keeps one
    speculator.history.add([8, 1, 2, 3, 4, 5])
    params = SamplingParams(temperature=0)
    own = Sequence("a", 0, [9, 2, 3, 7, 1, 2, 3], params, max_tokens=10)  # (2, 3) before: 7
    other = Sequence("b", 0, [6, 2, 3, 7, 0, 2, 3], params, max_tokens=10)
    for seq in (own, other):
        seq.num_computed_tokens = len(seq) - 1  # decoding
    speculator.propose([own, other])
    assert own.draft_ids == [4, 5]  # (1, 2, 3) matches the finished request: 3 tokens beat 2
    assert other.draft_ids == [7, 0]  # its own (2, 3) is as long as any match in the history


def test_history_drops_the_older_half_past_its_limit():
    history = RequestHistory(2, 2, 4)
    for i in range(5):
        history.add([100 + i, 1, 2, 10 + i])
    assert len(history.texts) == 2
    assert history.propose([1, 2], 1) == [14]
    assert history.propose([100, 1], 1) == []  # an evicted text proposes nothing
    assert history.propose([103, 1], 1) == [2]


def test_greedy_verification_accepts_the_matching_prefix():
    assert verify_greedy([5, 6, 7, 8], [5, 6, 7]) == [5, 6, 7, 8]  # all accepted, plus bonus
    assert verify_greedy([5, 9, 7, 8], [5, 6, 7]) == [5, 9]  # the target's own token replaces
    assert verify_greedy([4, 6, 7, 8], [5, 6, 7]) == [4]
    assert verify_greedy([3], []) == [3]


def _within_binomial_bounds(counts: torch.Tensor, probs: torch.Tensor, n: int, z: float = 4.5) -> None:
    """Each bin's frequency lies within z standard deviations of its probability (z = 4.5:
    a false alarm per bin about 7e-6, so under 1e-4 over every bin of these tests)."""
    freq = counts.double() / n
    sd = (probs.double() * (1 - probs.double()) / n).sqrt()
    bad = ((freq - probs.double()).abs() > z * sd + 1 / n).nonzero().flatten().tolist()
    assert not bad, [(b, float(freq[b]), float(probs[b])) for b in bad]


def _random_dist(gen: torch.Generator, vocab: int, sharp: float) -> torch.Tensor:
    return (torch.randn(vocab, generator=gen) * sharp).softmax(-1)


@pytest.mark.parametrize("one_hot", [True, False])
def test_rejection_sampling_keeps_the_target_distribution(one_hot):
    """Two positions, many samples: the first emitted token follows p0, and the second,
    given the first, follows p1 (whether it came from an accepted draft or a bonus draw)."""
    gen = torch.Generator().manual_seed(0)
    vocab, n = 6, 40_000
    p = torch.stack([_random_dist(gen, vocab, 1.5) for _ in range(3)])  # rows after draft[:i]
    draft = [2, 4]
    q = None if one_hot else torch.stack([_random_dist(gen, vocab, 1.0) for _ in range(2)])
    first = torch.zeros(vocab)
    second = torch.zeros(vocab)  # second token, counted when the first was the draft's
    followed = 0
    for _ in range(n):
        if q is not None:
            draft = [
                int(torch.multinomial(q[0], 1, generator=gen)),
                int(torch.multinomial(q[1], 1, generator=gen)),
            ]
            rows = p.clone()
            rows[1] = p[1].roll(draft[0])  # the target's next distribution depends on the token
            out = rejection_sample(rows, draft, q, gen)
        else:
            out = rejection_sample(p, draft, None, gen)
        first[out[0]] += 1
        if out[0] == draft[0] and q is None:
            followed += 1
            second[out[1]] += 1
    _within_binomial_bounds(first, p[0], n)
    if one_hot:
        _within_binomial_bounds(second, p[1], followed)


def test_rejection_with_a_certain_draft_accepts_all_and_draws_the_bonus():
    p = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert rejection_sample(p, [1, 2]) == [1, 2, 0]
    assert rejection_sample(p, [0, 2]) == [1]  # p(0) = 0: rejected, and the residual is p minus 0


def test_rejection_matches_plain_sampling_after_top_k_top_p_temperature():
    """The verifier gets the same processed distribution the sampler draws from: compare the
    sampler's own draws against rejection sampling of an always-drafted token."""
    from qthink.engine.sampler import SamplingBatch, filter_logits, sample
    from qthink.engine.sampling_params import SamplingParams

    gen = torch.Generator().manual_seed(3)
    vocab, n = 12, 30_000
    logits = torch.randn(1, vocab, generator=gen) * 2
    params = SamplingParams(temperature=0.7, top_k=6, top_p=0.9, min_p=0.02)
    batch = SamplingBatch.build([params], [[1]], [[]], [None], vocab, "cpu", global_generator=gen)
    probs = filter_logits(logits, batch).softmax(-1)[0]
    draft_token = int(probs.argsort()[-2])  # a likely token, but not certain
    plain = torch.bincount(
        torch.cat(
            [
                sample(logits.expand(1000, -1), _batch_of(params, 1000, vocab, gen)).token_ids
                for _ in range(n // 1000)
            ]
        ),
        minlength=vocab,
    )
    speculated = torch.zeros(vocab)
    stacked = torch.stack([probs, probs])
    for _ in range(n):
        speculated[rejection_sample(stacked, [draft_token], None, gen)[0]] += 1
    _within_binomial_bounds(plain, probs, n)
    _within_binomial_bounds(speculated, probs, n)
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-5)


def _batch_of(params, rows: int, vocab: int, gen):
    from qthink.engine.sampler import SamplingBatch

    return SamplingBatch.build(
        [params] * rows, [[1]] * rows, [[]] * rows, [None] * rows, vocab, "cpu", global_generator=gen
    )
