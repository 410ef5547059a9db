"""Batched sampling: penalties, temperature, top-k/top-p/min-p, per-request seeds, logprobs."""

from dataclasses import dataclass

import torch

from qthink.engine.sampling_params import SamplingParams


@dataclass
class SampleResult:
    token_ids: torch.Tensor  # [B] long
    logprobs: torch.Tensor  # [B] logprob of the sampled token under the raw model distribution
    ranks: torch.Tensor  # [B] 1-based rank of the sampled token in that distribution
    top_ids: torch.Tensor | None = None  # [B, K] when some row asks for top-K logprobs
    top_logprobs: torch.Tensor | None = None


@dataclass
class SamplingBatch:
    """Per-row sampling settings as tensors, built once per step; work a feature needs is
    skipped when no row in the batch uses it."""

    temperature: torch.Tensor  # [B, 1]; 0 marks a greedy row
    top_k: torch.Tensor | None  # [B] long, vocab size where off
    top_p: torch.Tensor | None  # [B, 1]
    min_p: torch.Tensor | None  # [B, 1]
    presence: torch.Tensor | None  # [B, 1]
    frequency: torch.Tensor | None  # [B, 1]
    repetition: torch.Tensor | None  # [B, 1]
    output_counts: torch.Tensor | None  # [B, V] occurrences in the output so far
    seen: torch.Tensor | None  # [B, V] bool: in prompt or output (repetition penalty)
    blocked: torch.Tensor | None  # [B, V] bool: EOS/stop ids before min_tokens
    generators: list[torch.Generator | None]
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
        rows = len(params)

        def column(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype, device=device).view(rows, 1)

        temps = [p.temperature or 0.0 for p in params]
        greedy = [t < 1e-5 for t in temps]
        top_k = [p.top_k if p.top_k and p.top_k > 0 else vocab_size for p in params]
        need_counts = any(p.presence_penalty or p.frequency_penalty for p in params)
        need_seen = any(p.repetition_penalty != 1.0 for p in params)
        blocked = None
        if any(p.min_tokens > len(o) for p, o in zip(params, output_ids)):
            blocked = torch.zeros(rows, vocab_size, dtype=torch.bool, device=device)
            for r, (p, o) in enumerate(zip(params, output_ids)):
                if p.min_tokens > len(o):
                    ids = list(eos_ids[r] if eos_ids else ()) + list(p.stop_token_ids)
                    blocked[r, [i for i in ids if i < vocab_size]] = True
        asked = [p.logprobs for p in params if p.logprobs is not None]
        return cls(
            temperature=column(temps),
            top_k=torch.tensor(top_k, device=device) if min(top_k) < vocab_size else None,
            top_p=column([p.top_p or 1.0 for p in params])
            if any((p.top_p or 1) < 1 for p in params)
            else None,
            min_p=column([p.min_p for p in params]) if any(p.min_p > 0 for p in params) else None,
            presence=column([p.presence_penalty for p in params]) if need_counts else None,
            frequency=column([p.frequency_penalty for p in params]) if need_counts else None,
            repetition=column([p.repetition_penalty for p in params]) if need_seen else None,
            output_counts=_counts(output_ids, vocab_size, device) if need_counts else None,
            seen=_seen(prompt_ids, output_ids, vocab_size, device) if need_seen else None,
            blocked=blocked,
            generators=generators,
            global_generator=global_generator,
            num_logprobs=max(asked) if asked else -1,
            all_greedy=all(greedy),
        )


def _any_top_p(params: list[SamplingParams]) -> bool:
    return any((p.top_p or 1.0) < 1.0 for p in params)


def _counts(output_ids, vocab_size, device) -> torch.Tensor:
    counts = torch.zeros(len(output_ids), vocab_size, dtype=torch.float32, device=device)
    for r, ids in enumerate(output_ids):
        if ids:
            t = torch.tensor(ids, device=device)
            counts[r].index_add_(0, t, torch.ones_like(t, dtype=torch.float32))
    return counts


def _seen(prompt_ids, output_ids, vocab_size, device) -> torch.Tensor:
    seen = torch.zeros(len(prompt_ids), vocab_size, dtype=torch.bool, device=device)
    for r, (p, o) in enumerate(zip(prompt_ids, output_ids)):
        seen[r, torch.tensor(p + o, dtype=torch.long, device=device)] = True
    return seen


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """vLLM's definitions: repetition over prompt+output (positive logits divided, negative
    multiplied); presence and frequency over the output."""
    if batch.repetition is not None:
        penalised = torch.where(logits > 0, logits / batch.repetition, logits * batch.repetition)
        logits = torch.where(batch.seen, penalised, logits)
    if batch.output_counts is not None:
        logits = logits - batch.frequency * batch.output_counts
        logits = logits - batch.presence * (batch.output_counts > 0)
    if batch.blocked is not None:
        logits = logits.masked_fill(batch.blocked, float("-inf"))
    return logits


def filter_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Temperature-scaled logits with top-k, top-p and min-p applied (-inf outside)."""
    logits = logits / batch.temperature.clamp_min(1e-5)
    if batch.top_k is not None or batch.top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        drop = torch.zeros_like(sorted_logits, dtype=torch.bool)
        if batch.top_k is not None:
            ranks = torch.arange(logits.shape[-1], device=logits.device)
            drop |= ranks[None, :] >= batch.top_k[:, None]
        if batch.top_p is not None:
            probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
            before = probs.cumsum(-1) - probs  # mass strictly above each token
            drop |= before >= batch.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    if batch.min_p is not None:
        probs = logits.softmax(-1)
        threshold = batch.min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


def sample(logits: torch.Tensor, batch: SamplingBatch) -> SampleResult:
    """Pick one token per row. Seeded rows draw only from their own generator, so their
    samples do not depend on what else is in the batch."""
    raw_logprobs = logits.log_softmax(-1)
    processed = apply_penalties(logits, batch)
    if batch.all_greedy:
        tokens = processed.argmax(-1)
    else:
        probs = filter_logits(processed, batch).softmax(-1)
        tokens = _exponential_race(probs, batch)
        greedy_rows = batch.temperature.view(-1) < 1e-5
        if greedy_rows.any():
            tokens = torch.where(greedy_rows, processed.argmax(-1), tokens)
    chosen = raw_logprobs.gather(1, tokens[:, None]).squeeze(1)
    ranks = (raw_logprobs > chosen[:, None]).sum(-1) + 1
    result = SampleResult(tokens, chosen, ranks)
    if batch.num_logprobs > 0:
        result.top_logprobs, result.top_ids = raw_logprobs.topk(batch.num_logprobs, dim=-1)
    return result


def _exponential_race(probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """argmax(p / q) with q ~ Exp(1) samples from p; each row draws its own q."""
    q = torch.empty_like(probs)
    if batch.global_generator is not None or not any(batch.generators):
        q.exponential_(generator=batch.global_generator)
    for row, gen in enumerate(batch.generators):
        if gen is not None:  # a CPU generator: draw on the CPU, then move (device-agnostic)
            q[row] = torch.empty(probs.shape[-1], device=gen.device).exponential_(generator=gen).to(q.device)
    return (probs / q).argmax(-1)
