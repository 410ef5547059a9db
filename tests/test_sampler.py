"""The batched sampler against per-row numpy reference computations."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from qthink.engine.sampler import SamplingBatch, apply_penalties, filter_logits, sample
from qthink.engine.sampling_params import SamplingParams

V = 64
EOS = 0


def params(**overrides) -> SamplingParams:
    """Already defaulted, as the engine passes them: plain temperature-1 sampling unless told."""
    return SamplingParams(**{"temperature": 1.0, "top_p": 1.0, "top_k": 0, **overrides})


def build(rows, prompts=None, outputs=None, generators=None, vocab=V, global_seed=0):
    n = len(rows)
    return SamplingBatch.build(
        rows,
        prompts or [[1, 2, 3]] * n,
        outputs or [[]] * n,
        generators or [None] * n,
        vocab,
        "cpu",
        eos_ids=[(EOS,)] * n,
        global_generator=torch.Generator().manual_seed(global_seed),
    )


def random_logits(rows: int, seed: int, vocab: int = V, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def reference_penalties(logits: np.ndarray, p: SamplingParams, prompt: list[int], output: list[int]):
    """vLLM's penalties, one row, written from their definitions."""
    out = logits.astype(np.float64).copy()
    for token in set(prompt) | set(output):
        out[token] = (
            out[token] / p.repetition_penalty if out[token] > 0 else out[token] * p.repetition_penalty
        )
    for token in set(output):
        out[token] -= p.frequency_penalty * output.count(token) + p.presence_penalty
    return out


def reference_survivors(logits: np.ndarray, p: SamplingParams) -> set[int]:
    """Tokens one row may sample: temperature, min-p, top-k, then top-p on what is left."""
    scaled = logits.astype(np.float64) / p.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    alive = [t for t in range(len(logits)) if probs[t] >= p.min_p * probs.max()]
    alive.sort(key=lambda t: -scaled[t])
    if p.top_k and p.top_k > 0:
        alive = alive[: p.top_k]
    if p.top_p < 1.0:
        mass = probs[alive] / probs[alive].sum()
        kept, total = [], 0.0
        for token, share in zip(alive, mass):
            kept.append(token)
            total += share
            if total >= p.top_p:
                break
        alive = kept
    return set(alive)


def survivors(filtered: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(row > float("-inf")).flatten().tolist()) for row in filtered]


PENALTY_ROWS = [
    params(presence_penalty=1.5),
    params(frequency_penalty=0.7),
    params(frequency_penalty=-0.4, presence_penalty=-1.0),
    params(repetition_penalty=1.8),
    params(repetition_penalty=0.6),
    params(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.25),
    params(),
]


def test_each_penalty_matches_the_reference():
    rows = len(PENALTY_ROWS)
    logits = random_logits(rows, seed=1)
    prompts = [[3, 4, 9, 9, r + 10] for r in range(rows)]
    outputs = [[5, 5, 6, 3, 5, r + 20, 4] for r in range(rows)]
    got = apply_penalties(logits, build(PENALTY_ROWS, prompts, outputs))
    for r, p in enumerate(PENALTY_ROWS):
        expected = reference_penalties(logits[r].numpy(), p, prompts[r], outputs[r])
        np.testing.assert_allclose(got[r].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert not torch.equal(got[:-1], logits[:-1])  # penalties did something ...
    assert torch.equal(got[-1], logits[-1])  # ... but not to the row without them


def test_penalties_leave_the_raw_logits_alone():
    logits = random_logits(2, seed=2)
    before = logits.clone()
    apply_penalties(logits, build(PENALTY_ROWS[:2], outputs=[[1, 1], [2]]))
    assert torch.equal(logits, before)


def test_greedy_with_penalties_is_the_argmax_of_the_penalised_reference():
    rows = len(PENALTY_ROWS)
    logits = random_logits(rows, seed=3)
    prompts = [list(range(r, r + 8)) for r in range(rows)]
    outputs = [logits[r].topk(3).indices.tolist() * 2 for r in range(rows)]  # penalise the favourites
    greedy = [SamplingParams(**{**vars(p), "temperature": 0.0}) for p in PENALTY_ROWS]
    got = sample(logits, build(greedy, prompts, outputs)).token_ids.tolist()
    expected = [
        int(np.argmax(reference_penalties(logits[r].numpy(), greedy[r], prompts[r], outputs[r])))
        for r in range(rows)
    ]
    assert got == expected


FILTER_ROWS = [
    params(top_k=5),
    params(top_p=0.8),
    params(min_p=0.1),
    params(temperature=0.5, top_p=0.9),
    params(temperature=1.7, top_p=0.6, top_k=12),
    params(temperature=0.6, top_p=0.95, top_k=20),  # Qwen's recommended sampling
    params(min_p=0.05, top_p=0.7, temperature=1.3),
    params(top_k=-1, top_p=0.999),
    params(),
]


def test_filters_keep_exactly_the_reference_tokens():
    logits = random_logits(len(FILTER_ROWS), seed=4)
    filtered = filter_logits(logits, build(FILTER_ROWS))
    for r, (p, kept) in enumerate(zip(FILTER_ROWS, survivors(filtered))):
        assert kept == reference_survivors(logits[r].numpy(), p), p
        scaled = logits[r] / p.temperature
        assert torch.allclose(filtered[r, sorted(kept)], scaled[sorted(kept)])


def test_top_k_only_batch_takes_the_same_tokens_as_the_full_sort():
    rows = [params(top_k=3), params(top_k=7, top_p=0.9), params(top_k=1, min_p=0.3)]
    logits = random_logits(3, seed=5)
    alone = survivors(filter_logits(logits, build(rows)))  # every row has top_k: top-k path
    with_full_row = survivors(
        filter_logits(torch.cat([logits, logits[:1]]), build(rows + [params(top_p=0.5)]))
    )
    assert alone == with_full_row[:3]
    assert alone == [reference_survivors(logits[r].numpy(), p) for r, p in enumerate(rows)]


def test_greedy_is_argmax_and_draws_no_random_numbers():
    logits = random_logits(5, seed=6)
    generator = torch.Generator().manual_seed(11)
    state = generator.get_state()
    batch = build([params(temperature=0.0, top_k=20, top_p=0.95)] * 5, generators=[generator] + [None] * 4)
    assert sample(logits, batch).token_ids.tolist() == logits.argmax(-1).tolist()
    assert torch.equal(generator.get_state(), state)


def test_greedy_rows_in_a_sampling_batch_stay_argmax():
    logits = random_logits(6, seed=7)
    rows = [params(temperature=0.0), params(top_k=3), params(temperature=0.0, presence_penalty=2.0)] * 2
    tokens = sample(logits, build(rows)).token_ids
    assert tokens[[0, 3]].tolist() == logits[[0, 3]].argmax(-1).tolist()
    assert tokens[[2, 5]].tolist() == logits[[2, 5]].argmax(-1).tolist()  # empty output: nothing to penalise


def test_logprobs_ranks_and_top_logprobs_follow_the_raw_distribution():
    logits = random_logits(4, seed=8)
    rows = [
        params(temperature=0, logprobs=5, presence_penalty=2, frequency_penalty=2),
        params(logprobs=0),
        params(top_k=4),
        params(temperature=0),
    ]
    result = sample(logits, build(rows, outputs=[[int(logits[0].argmax())] * 3] * 4))
    raw = logits.double().numpy()
    log_softmax = raw - raw.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    for r, token in enumerate(result.token_ids.tolist()):
        assert result.logprobs[r].item() == pytest.approx(log_softmax[r, token], abs=1e-5)
        assert result.ranks[r].item() == 1 + int((raw[r] > raw[r, token]).sum())
        best = np.argsort(-raw[r])[:5]
        assert result.top_ids[r].tolist() == best.tolist()
        np.testing.assert_allclose(result.top_logprobs[r].numpy(), log_softmax[r, best], atol=1e-5)
    assert result.ranks[0].item() > 1  # the penalty pushed row 0 off its raw favourite


def test_no_top_logprobs_unless_asked():
    result = sample(random_logits(2, seed=9), build([params(logprobs=0), params()]))
    assert result.top_ids is None and result.top_logprobs is None


def test_min_tokens_blocks_eos_and_stop_ids_until_reached():
    logits = torch.zeros(2, V)
    logits[:, EOS] = 100.0
    logits[:, 7] = 90.0
    logits[:, 9] = 80.0
    rows = [params(temperature=0.0, min_tokens=3, stop_token_ids=[7])] * 2
    early = sample(logits, build(rows, outputs=[[1], [1, 2, 3]])).token_ids.tolist()
    assert early == [9, EOS]
    sampled = sample(logits, build([params(min_tokens=2, stop_token_ids=[7])] * 2, outputs=[[], [4]]))
    assert not set(sampled.token_ids.tolist()) & {EOS, 7}


def seeded_steps(logits_steps, row_params, others, others_params, seed=1234):
    """Tokens a seeded row (row 0) samples over several steps beside other rows."""
    generator = torch.Generator().manual_seed(seed)
    tokens = []
    for step, logits in enumerate(logits_steps):
        batch_logits = torch.cat([logits[None], others[step]]) if others is not None else logits[None]
        rows = [row_params] + others_params
        generators = [generator] + [None] * len(others_params)
        outputs = [tokens[:]] + [[5, 6]] * len(others_params)
        tokens.append(
            sample(batch_logits, build(rows, outputs=outputs, generators=generators)).token_ids[0].item()
        )
    return tokens


@pytest.mark.parametrize(
    "row",
    [params(), params(temperature=0.6, top_p=0.95, top_k=20), params(min_p=0.05, presence_penalty=1.0)],
    ids=["plain", "qwen-default", "min-p-penalty"],
)
def test_seeded_row_is_the_same_alone_and_in_a_busy_batch(row):
    steps = [random_logits(1, seed=100 + s, scale=1.5)[0] for s in range(12)]
    others = [random_logits(5, seed=200 + s) for s in range(12)]
    busy = [
        params(temperature=0.0),
        params(top_p=0.5),
        params(top_k=3),
        params(repetition_penalty=1.4),
        params(),
    ]
    alone = seeded_steps(steps, row, None, [])
    assert alone == seeded_steps(steps, row, others, busy)
    assert alone == seeded_steps(steps, row, others, [params(top_k=40)] * 5)  # the top-k-only path
    assert len(set(alone)) > 1  # it really samples


def test_same_seed_same_tokens_different_seed_different_tokens():
    logits = random_logits(1, seed=12, scale=0.5)

    def draw(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return [
            sample(logits[:1], build([params()], generators=[generator])).token_ids.item() for _ in range(40)
        ]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def chi_square_bound(degrees: int, z: float = 3.719) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z 3.719: one in 10,000)."""
    k = degrees
    return k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3


@pytest.mark.parametrize(
    "row",
    [
        params(temperature=0.8, top_k=6),
        params(temperature=1.2, top_p=0.9),
        params(min_p=0.08, temperature=0.7),
    ],
    ids=["top-k", "top-p", "min-p"],
)
@pytest.mark.parametrize("seeded", [False, True])
def test_sampled_frequencies_follow_the_filtered_softmax(row, seeded):
    draws = 6000
    logits = random_logits(1, seed=13, scale=1.0)
    kept = sorted(reference_survivors(logits[0].numpy(), row))
    assert 3 <= len(kept) < V
    scaled = logits[0, kept].double() / row.temperature
    expected = torch.softmax(scaled, -1).numpy() * draws
    # seeded: one row per seed, each drawing from its own generator; else the global generator
    generators = [torch.Generator().manual_seed(seed) for seed in range(draws)] if seeded else None
    batch = build([row] * draws, generators=generators, global_seed=15)
    tokens = sample(logits.expand(draws, V), batch).token_ids.tolist()
    counts = np.bincount(tokens, minlength=V)
    assert counts.sum() == counts[kept].sum()  # never a filtered-out token
    statistic = float((((counts[kept] - expected) ** 2) / expected).sum())
    assert statistic < chi_square_bound(len(kept) - 1)


def test_full_vocabulary_seeded_row_with_qwen_defaults():
    vocab = 151_936
    row = params(temperature=0.6, top_p=0.95, top_k=20)
    logits = random_logits(4, seed=16, vocab=vocab)

    def first(batch_rows: list[SamplingParams]) -> int:
        n = len(batch_rows)
        generators = [torch.Generator().manual_seed(3)] + [None] * (n - 1)
        return sample(logits[:n], build(batch_rows, generators=generators, vocab=vocab)).token_ids[0].item()

    assert first([row]) == first([row, params(), params(temperature=0.0), params(top_p=0.3)])
    assert first([row]) in logits[0].topk(20).indices.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_seeded_rows_hold_and_greedy_matches_cpu():
    logits = random_logits(4, seed=17)
    rows = [
        params(temperature=0.6, top_p=0.95, top_k=20, presence_penalty=0.5),
        params(),
        params(temperature=0),
    ]
    rows.append(params(top_p=0.4, logprobs=3))

    def on_cuda(batch_rows, n):
        generators = [torch.Generator().manual_seed(5)] + [None] * (n - 1)
        batch = SamplingBatch.build(
            batch_rows, [[1, 2]] * n, [[3]] * n, generators, V, "cuda", eos_ids=[(EOS,)] * n
        )
        return sample(logits[:n].cuda(), batch)

    busy = on_cuda(rows, 4)
    assert busy.token_ids[0].item() == on_cuda(rows[:1], 1).token_ids[0].item()
    assert busy.token_ids[2].item() == logits[2].argmax().item()
    assert busy.top_ids.device.type == "cuda" and busy.top_ids.shape == (4, 3)


def test_no_logprobs_unless_asked_and_the_same_tokens():
    """Without a row asking for logprobs the sampler skips them (greedy is one argmax pass);
    the tokens are the ones it picks when logprobs are asked for."""
    logits = random_logits(6, seed=10)
    rows = [params(temperature=0.0), params(top_k=5), params(top_p=0.8), params(min_p=0.1)] + [params()] * 2
    generators = [torch.Generator().manual_seed(100 + r) for r in range(6)]
    for kind in ("greedy", "mixed"):
        chosen = rows[:1] * 6 if kind == "greedy" else rows
        asked = [dataclasses.replace(p, logprobs=0) for p in chosen]
        gens = lambda: [torch.Generator().manual_seed(g.initial_seed()) for g in generators]
        plain = sample(logits, build(chosen, generators=gens()))
        with_logprobs = sample(logits, build(asked, generators=gens()))
        assert plain.logprobs is None and plain.ranks is None
        assert with_logprobs.logprobs is not None
        assert plain.token_ids.tolist() == with_logprobs.token_ids.tolist()


def full_sort_survivors(logits: torch.Tensor, p: SamplingParams) -> set[int]:
    """One row through a sort of the whole vocabulary: temperature, min-p, top-k, then top-p
    with the mass before each token summed best first (what the sampler must equal). Without
    top-k the row's mass is summed in vocabulary order, as the sampler sums it: summed in sorted
    order it differs in the last bit, and on a flat row that can move the boundary by a token."""
    scaled = logits / p.temperature
    if p.min_p > 0:
        scaled = scaled.masked_fill(scaled < scaled.max() + math.log(p.min_p), float("-inf"))
    values, ids = scaled.sort(descending=True)
    mass = scaled.logsumexp(-1)
    if p.top_k > 0:
        values[p.top_k :] = float("-inf")
        mass = values.logsumexp(-1)
    running = (values - mass).exp().cumsum(-1)
    mass_above = torch.cat([torch.zeros(1), running[:-1]])
    return set(ids[(values > float("-inf")) & (mass_above < p.top_p)].tolist())


@pytest.mark.parametrize("scale", [8.0, 3.0, 0.05], ids=["peaked", "spread", "flat"])
def test_top_p_without_top_k_keeps_the_full_sort_tokens_and_sorts_nothing(scale):
    """Top-p rows without top-k take their candidates by partial selection (growing until the
    mass p is inside: once, a few times, or up to the whole row for a flat row), and keep
    exactly the tokens a full sort keeps, beside rows that need other numbers of candidates."""
    vocab = 151_936
    rows = [
        params(top_p=0.95, temperature=0.6),
        params(top_p=0.5),
        params(top_p=0.9, min_p=0.02, temperature=1.3),
        params(top_k=40, top_p=0.8),
        params(temperature=0.0),
        params(top_p=0.999),
    ]
    logits = random_logits(len(rows), seed=20, vocab=vocab, scale=scale)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        filtered = filter_logits(logits, build(rows, vocab=vocab))
    kept = survivors(filtered)
    for r, p in enumerate(rows):
        if p.temperature > 0:
            assert kept[r] == full_sort_survivors(logits[r], p), (r, p)
    sorts = [e for e in prof.key_averages() if e.key == "aten::sort"]
    assert scale < 1 or not sorts  # only a flat row needs every token


def test_rows_without_filters_still_sample_the_whole_vocabulary():
    logits = random_logits(3, seed=21, vocab=5000, scale=0.5)
    rows = [params(top_p=0.3), params(), params(min_p=0.2)]
    kept = survivors(filter_logits(logits, build(rows, vocab=5000)))
    assert kept[1] == set(range(5000))
    assert kept[0] == full_sort_survivors(logits[0], rows[0])
    assert kept[2] == full_sort_survivors(logits[2], rows[2])
