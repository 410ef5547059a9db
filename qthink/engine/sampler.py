"""Batched sampling: penalties, temperature, min-p/top-k/top-p, per-request seeds, logprobs."""

from dataclasses import dataclass
from itertools import chain
from typing import NamedTuple, cast

import numpy as np
import torch

from qthink.engine.sampling_params import SamplingParams

SAMPLING_EPS = 1e-5  # a temperature below this is greedy, as in vLLM


@dataclass
class SampleResult:
    token_ids: torch.Tensor  # [B] long
    # [B] logprob of the sampled token under the raw model distribution, and its 1-based rank
    # there; None when no row of the batch asks for logprobs (they cost passes over the vocabulary)
    logprobs: torch.Tensor | None = None
    ranks: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None  # [B, K] when some row asks for top-K logprobs
    top_logprobs: torch.Tensor | None = None


class SampledToken(NamedTuple):
    """One emitted token with its logprob and rank under the raw distribution, and the top-K."""

    token: int
    logprob: float | None  # None when the request asked for no logprobs
    rank: int | None
    top_ids: list[int]
    top_logprobs: list[float]


def token_rows(result: SampleResult) -> list[SampledToken]:
    """A SampleResult as one SampledToken per row."""
    top_ids = result.top_ids.tolist() if result.top_ids is not None else None
    top_lps = result.top_logprobs.tolist() if result.top_logprobs is not None else None
    tokens = result.token_ids.tolist()
    logprobs = result.logprobs.tolist() if result.logprobs is not None else [None] * len(tokens)
    ranks = result.ranks.tolist() if result.ranks is not None else [None] * len(tokens)
    return [
        SampledToken(t, lp, r, top_ids[i] if top_ids else [], top_lps[i] if top_lps else [])
        for i, (t, lp, r) in enumerate(zip(tokens, logprobs, ranks))
    ]


def sampled_tokens(logits: torch.Tensor, tokens: torch.Tensor, num_logprobs: int) -> list[SampledToken]:
    """SampledTokens for tokens chosen elsewhere (speculative verification), one per row."""
    if num_logprobs < 0:
        return token_rows(SampleResult(tokens))
    chosen = logits.gather(1, tokens[:, None])
    ranks = (logits > chosen).sum(-1, dtype=torch.int32).long() + 1
    return token_rows(_with_logprobs(logits, tokens, chosen, ranks, num_logprobs))


@dataclass
class Penalties:
    """Sparse penalty work for one step: flat indices (row * V + token) into the logits of the
    tokens a penalty touches, with the per-index amounts, so cost follows the number of
    distinct tokens seen rather than batch x vocabulary."""

    repetition_index: torch.Tensor | None = None  # distinct tokens of prompt + output, penalised rows
    repetition: torch.Tensor | None = None  # the row's repetition penalty, per index
    output_index: torch.Tensor | None = None  # distinct output tokens, rows with presence/frequency
    output_amount: torch.Tensor | None = None  # frequency * count, per index
    presence: torch.Tensor | None = None  # the row's presence penalty, per index
    blocked_index: torch.Tensor | None = None  # EOS and stop ids of rows short of min_tokens


@dataclass
class SamplingBatch:
    """Per-row sampling settings as tensors, built once per step. A feature no row uses is None
    and costs nothing; filters are neutral on greedy rows, whose token is the argmax."""

    temperature: torch.Tensor | None  # [B, 1]; None when every sampled row has temperature 1
    greedy: torch.Tensor | None  # [B] bool; None when no row is greedy
    top_k: torch.Tensor | None  # [B, 1] long, vocab size where off
    top_p: torch.Tensor | None  # [B, 1], inf where off
    log_min_p: torch.Tensor | None  # [B, 1], -inf where off
    candidates: int  # every sampled row has top_k: only this many tokens per row are considered
    penalties: Penalties | None
    seeded_rows: torch.Tensor | None  # [S] rows with their own generator that sample this step
    step_keys: torch.Tensor | None  # [S, 1] a fresh 32-bit key per seeded row, from its generator
    global_generator: torch.Generator | None
    num_logprobs: int  # max top-K asked in the batch; -1 when none asks
    all_greedy: bool

    @classmethod
    def build(
        cls,
        params: list[SamplingParams],
        prompt_ids: list[list[int]],
        output_ids: list[list[int]],
        generators: list[torch.Generator | None],
        vocab_size: int,
        device,
        eos_ids: list[tuple[int, ...]] | None = None,
        global_generator: torch.Generator | None = None,
    ) -> "SamplingBatch":
        greedy = [(p.temperature or 0.0) < SAMPLING_EPS for p in params]
        sampled = [p for p, g in zip(params, greedy) if not g]
        sampled_k = [_top_k(p, vocab_size) for p in sampled]
        column = _column_maker(greedy, device)
        asked = [p.logprobs for p in params if p.logprobs is not None]
        return cls(
            temperature=column([p.temperature for p in params], 1.0)
            if any(p.temperature != 1.0 for p in sampled)
            else None,
            greedy=torch.tensor(greedy, device=device) if any(greedy) else None,
            top_k=column([_top_k(p, vocab_size) for p in params], vocab_size, torch.long)
            if any(k < vocab_size for k in sampled_k)
            else None,
            top_p=column([_top_p(p) for p in params], float("inf"))
            if any(_top_p(p) < 1.0 for p in sampled)
            else None,
            log_min_p=column([p.min_p for p in params], 0.0).log()
            if any(p.min_p > 0 for p in sampled)
            else None,
            candidates=max(sampled_k) if sampled_k and max(sampled_k) < vocab_size else 0,
            penalties=_penalties(params, prompt_ids, output_ids, eos_ids, vocab_size, device),
            **_step_keys(generators, greedy, device),
            global_generator=global_generator,
            num_logprobs=max(asked) if asked else -1,
            all_greedy=all(greedy),
        )


def _step_keys(generators: list[torch.Generator | None], greedy: list[bool], device) -> dict:
    """One draw per step from each seeded row that samples (greedy rows draw nothing), so a
    row's stream of keys depends on its own seed only."""
    pairs = enumerate(zip(generators, greedy))
    seeded = {r: g for r, (g, is_greedy) in pairs if g is not None and not is_greedy}
    rows = list(seeded)
    if not rows:
        return {"seeded_rows": None, "step_keys": None}
    keys = [torch.randint(0, 2**32, (1,), generator=g, device=g.device) for g in seeded.values()]
    return {
        "seeded_rows": torch.tensor(rows, device=device),
        "step_keys": torch.cat([k.to(device) for k in keys]).view(-1, 1),
    }


def _top_k(params: SamplingParams, vocab_size: int) -> int:
    """0 and -1 switch top-k off, as does a k at least the vocabulary."""
    k = params.top_k or 0
    return min(k, vocab_size) if k > 0 else vocab_size


def _top_p(params: SamplingParams) -> float:
    """1 is off; off rows get inf so float rounding in the cumulative sum never drops a token."""
    p = params.top_p or 1.0
    return p if p < 1.0 else float("inf")


def _column_maker(greedy: list[bool], device):
    """Builds a [B, 1] tensor of a per-row setting, neutral on greedy rows."""

    def column(values: list, neutral, dtype=torch.float32) -> torch.Tensor:
        rows = [neutral if g else v for v, g in zip(values, greedy)]
        return torch.tensor(rows, dtype=dtype, device=device).view(-1, 1)

    return column


def _flat_index(
    rows_ids: list[list[int]] | dict[int, list[int]], rows: list[int], vocab_size: int
) -> np.ndarray:
    """row * V + token for every token of the chosen rows (repeats kept). numpy, because
    turning Python lists into indices and finding distinct ones is many times faster there."""
    lengths = np.array([len(rows_ids[r]) for r in rows], dtype=np.int64)
    tokens = np.fromiter(chain.from_iterable(rows_ids[r] for r in rows), np.int64, int(lengths.sum()))
    return np.repeat(np.array(rows, dtype=np.int64), lengths) * vocab_size + tokens


def _per_row(params: list[SamplingParams], name: str) -> np.ndarray:
    return np.array([getattr(p, name) for p in params], dtype=np.float32)


def _penalties(params, prompt_ids, output_ids, eos_ids, vocab_size, device) -> Penalties | None:
    rep_rows = [r for r, p in enumerate(params) if p.repetition_penalty != 1.0]
    out_rows = [r for r, p in enumerate(params) if p.presence_penalty or p.frequency_penalty]
    short = [r for r, p in enumerate(params) if p.min_tokens > len(output_ids[r])]
    if not (rep_rows or out_rows or short):
        return None
    on_device = lambda array: torch.from_numpy(array).to(device)
    penalties = Penalties()
    if rep_rows:
        both = {r: prompt_ids[r] + output_ids[r] for r in rep_rows}
        index = np.unique(_flat_index(both, rep_rows, vocab_size))
        penalties.repetition_index = on_device(index)
        penalties.repetition = on_device(_per_row(params, "repetition_penalty")[index // vocab_size])
    if out_rows:
        index, counts = np.unique(_flat_index(output_ids, out_rows, vocab_size), return_counts=True)
        rows = index // vocab_size
        penalties.output_index = on_device(index)
        penalties.output_amount = on_device(
            _per_row(params, "frequency_penalty")[rows] * counts.astype(np.float32)
        )
        penalties.presence = on_device(_per_row(params, "presence_penalty")[rows])
    if short:
        eos_ids = eos_ids or [()] * len(params)
        stops = [[t for t in (*eos, *p.stop_token_ids) if t < vocab_size] for eos, p in zip(eos_ids, params)]
        penalties.blocked_index = on_device(_flat_index(stops, short, vocab_size))
    return penalties


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """vLLM's definitions and order: min_tokens masks EOS and stop ids; repetition over
    prompt+output (positive logits divided, negative multiplied); then frequency * count and
    presence over the output. Returns a new tensor; the raw logits stay for logprobs."""
    penalties = batch.penalties
    if penalties is None:
        return logits
    logits = logits.clone()
    flat = logits.view(-1)
    if penalties.blocked_index is not None:
        flat[penalties.blocked_index] = float("-inf")
    if penalties.repetition_index is not None:
        values = flat[penalties.repetition_index]
        rep = cast(torch.Tensor, penalties.repetition)  # set together with repetition_index
        flat[penalties.repetition_index] = torch.where(values > 0, values / rep, values * rep)
    if penalties.output_index is not None:
        values = flat[penalties.output_index]
        amount = cast(torch.Tensor, penalties.output_amount)  # set together with output_index
        presence = cast(torch.Tensor, penalties.presence)
        flat[penalties.output_index] = values - amount - presence
    return logits


FIRST_CANDIDATES = 64  # tokens per row the top-p search starts with; it grows 8x until enough


def _candidates(logits: torch.Tensor, batch: SamplingBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Temperature-scaled logits of the tokens each row may sample (-inf for the rest) and
    their token ids, best first; ids is None when the columns are the whole vocabulary in
    order. vLLM's order: temperature, min-p, top-k, then top-p on the renormalised rest.
    Never a full sort of the vocabulary: top-k rows need their k best, top-p rows the best
    tokens up to the mass p, found by a partial selection that grows until it holds them."""
    if batch.top_k is None and batch.top_p is None:
        return _keep_min_p(_tempered(logits, batch), batch), None
    if batch.candidates:  # only the best k per row can survive
        values, ids = logits.topk(batch.candidates, dim=-1)
        values = _keep_top_k(_keep_min_p(_tempered(values, batch), batch), batch)  # selecting keeps the order
        return _keep_top_p(values, _running_mass(values, values.logsumexp(-1, keepdim=True)), batch), ids
    scaled = _keep_min_p(_tempered(logits, batch), batch)
    return _growing_candidates(scaled, batch)


def _tempered(values: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    return values if batch.temperature is None else values / batch.temperature


def _keep_min_p(values: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    if batch.log_min_p is None:
        return values
    best = values.max(dim=-1, keepdim=True).values
    return values.masked_fill(values < best + batch.log_min_p, float("-inf"))


def _keep_top_k(values: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """values: each row's best first."""
    if batch.top_k is None:
        return values
    positions = torch.arange(values.shape[-1], device=values.device)
    return values.masked_fill(positions >= batch.top_k, float("-inf"))


def _running_mass(values: torch.Tensor, normaliser: torch.Tensor) -> torch.Tensor:
    """Running sum of the candidates' probabilities, best first (`normaliser`: the log of each
    row's mass after min-p and top-k). A sequential sum: a prefix of the candidates gets the
    same sums as the whole row."""
    return (values - normaliser).exp().cumsum(-1)


def _keep_top_p(values: torch.Tensor, running: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Keeps a candidate while the mass of the better ones is below p (the best always stays)."""
    if batch.top_p is None:
        return values
    mass_above = torch.nn.functional.pad(running[:, :-1], (1, 0))
    return values.masked_fill(mass_above >= batch.top_p, float("-inf"))


def _growing_candidates(scaled: torch.Tensor, batch: SamplingBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-p (and top-k on only some rows) over the best k tokens of each row, k growing until
    every sampling row's kept tokens lie inside: a top-k row's k, a top-p row's tokens up to
    the mass p, a row with neither all its finite tokens. Greedy rows take the argmax
    elsewhere and ask for none. A row's decisions are those of a full sort (the same sums of
    the same prefix), ties between equal logits aside."""
    vocab = scaled.shape[-1]
    top_k = (
        batch.top_k if batch.top_k is not None else torch.full_like(scaled[:, :1], vocab, dtype=torch.long)
    )
    has_top_k = top_k < vocab
    top_p = batch.top_p if batch.top_p is not None else torch.full_like(scaled[:, :1], float("inf"))
    done = has_top_k if batch.greedy is None else has_top_k | batch.greedy[:, None]
    finite_k = top_k[has_top_k]
    k = min(vocab, max(FIRST_CANDIDATES, int(finite_k.max()) if finite_k.numel() else 0))
    whole_row = scaled.logsumexp(-1, keepdim=True)
    while True:
        values, ids = scaled.topk(k, dim=-1)
        values = _keep_top_k(values, batch)
        normaliser = torch.where(has_top_k, values.logsumexp(-1, keepdim=True), whole_row)
        running = _running_mass(values, normaliser)
        enough = done | (running[:, -1:] >= top_p) | (values[:, -1:] == float("-inf"))
        if k == vocab or bool(enough.all()):
            break
        k = min(vocab, k * 8)
    return _keep_top_p(values, running, batch), ids


def filter_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Temperature-scaled [B, V] logits with min-p, top-k and top-p applied (-inf outside)."""
    values, ids = _candidates(logits, batch)
    if ids is None:
        return values
    return torch.full_like(logits, float("-inf")).scatter_(-1, ids, values)


def sample(logits: torch.Tensor, batch: SamplingBatch, processed: torch.Tensor | None = None) -> SampleResult:
    """Pick one token per row of float32 [B, V] logits. Greedy rows take the argmax; seeded
    rows draw only from their own generator, so their samples do not depend on the batch.
    `processed`: the logits after the reweighting logits processors (by default, the
    penalties applied here); logprobs are always those of `logits`, and computed only when a
    row asks for them: greedy decoding without logprobs is one argmax pass."""
    if processed is None:
        processed = apply_penalties(logits, batch)
    if batch.all_greedy and processed is logits:  # the raw argmax: rank 1 by definition
        best, tokens = logits.max(-1)  # max(dim) is several times faster than argmax on CPU
        if batch.num_logprobs < 0:
            return SampleResult(tokens)
        ranks = torch.ones_like(tokens)
        return _with_logprobs(logits, tokens, best[:, None], ranks, batch.num_logprobs)
    if batch.all_greedy:
        tokens = processed.max(-1).indices
    else:
        tokens = _random_tokens(processed, batch)
        if batch.greedy is not None:
            tokens = torch.where(batch.greedy, processed.max(-1).indices, tokens)
    if batch.num_logprobs < 0:
        return SampleResult(tokens)
    chosen = logits.gather(1, tokens[:, None])
    ranks = (logits > chosen).sum(-1, dtype=torch.int32).long() + 1  # int32: a faster sum
    return _with_logprobs(logits, tokens, chosen, ranks, batch.num_logprobs)


def _random_tokens(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """The exponential race: argmax(p / q) with q ~ Exp(1) samples from p. In log space it
    needs no softmax: argmax(logit - log q), with q = -log u for u ~ U[0, 1) (Gumbel-max)."""
    values, ids = _candidates(logits, batch)
    uniform = _uniform_noise(values, ids, batch)
    # u = 0 gives q = inf and a -inf score: never chosen, and never a NaN
    choice = (values - (-uniform.log()).log()).max(-1).indices
    return choice if ids is None else ids.gather(1, choice[:, None]).squeeze(1)


def _uniform_noise(values, ids, batch: SamplingBatch) -> torch.Tensor:
    """U(0, 1) per candidate. A seeded row's noise is a hash of its step key and the token id,
    so it is the same whichever candidate set (top-k, sorted, whole vocabulary) the rest of
    the batch makes this step use, and costs only as many numbers as there are candidates."""
    uniform = torch.rand(values.shape, generator=batch.global_generator, device=values.device)
    if batch.seeded_rows is not None:
        rows = batch.seeded_rows
        token_ids = ids[rows] if ids is not None else torch.arange(values.shape[-1], device=values.device)
        uniform[rows] = _hash_uniform(cast(torch.Tensor, batch.step_keys), token_ids)  # set with seeded_rows
    return uniform


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2**32 for x, c < 2**32, in halves so no int64 product overflows."""
    return (((((x >> 16) * c) & 0xFFFF) << 16) + (x & 0xFFFF) * c) & _MASK32


def _hash_uniform(keys: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """A counter-based uniform in (0, 1) per (key, token): an odd-multiplier spread of the
    token id, then the lowbias32 integer hash; 24 bits make an exact float32."""
    x = (keys + token_ids * 0x9E3779B1) & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return ((x >> 8).float() + 0.5) * 2.0**-24


def _with_logprobs(logits, tokens, chosen, ranks, num_logprobs: int) -> SampleResult:
    """Logprob of each chosen token (raw logit `chosen`), and the top-K, under the raw
    distribution."""
    normaliser = logits.logsumexp(-1, keepdim=True)
    result = SampleResult(tokens, (chosen - normaliser).squeeze(1), ranks)
    if num_logprobs > 0:
        top_values, result.top_ids = logits.topk(num_logprobs, dim=-1)
        result.top_logprobs = top_values - normaliser
    return result
