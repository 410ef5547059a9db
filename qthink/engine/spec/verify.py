"""Verification step: the target's logits at each drafted position, through the same logits
pipeline as plain sampling, turned into the tokens each speculating sequence emits."""

from typing import cast

import torch

from qthink.engine.logits_processors import LogitsPipeline, StepLogits
from qthink.engine.sampler import SampledToken, SamplingBatch, filter_logits, sampled_tokens
from qthink.engine.sequence import Sequence
from qthink.engine.spec.rejection import rejection_sample, verify_greedy


def verify_drafts(
    logits: torch.Tensor,
    seqs: list[Sequence],
    pipeline: LogitsPipeline,
    global_generator: torch.Generator | None,
) -> list[list[SampledToken]]:
    """logits: raw float32 [sum(1 + len(draft)), V], each sequence's rows consecutive, row i
    after its text and draft_ids[:i]. Returns each sequence's emitted tokens with logprobs.

    Every row goes through the pipeline, with sampling settings whose output history includes
    draft[:i], so penalties and min_tokens see the drafted tokens before the row. Sequences
    with state-changing constraints (a grammar, a forced span) never draft: see Speculator."""
    counts = [1 + len(s.draft_ids) for s in seqs]
    rows_of = [s for s, c in zip(seqs, counts) for _ in range(c)]
    batch = _row_batch(seqs, logits, global_generator)
    constrained, processed = pipeline(logits, StepLogits(rows_of, batch))
    best = processed.max(-1).indices.tolist()
    probs = None if batch.all_greedy else filter_logits(processed, batch).softmax(-1)
    emitted: list[list[int]] = []
    rows: list[int] = []
    start = 0
    for seq, count in zip(seqs, counts):
        if seq.params.greedy:
            tokens = verify_greedy(best[start : start + count], seq.draft_ids)
        else:
            generator = seq.generator or global_generator
            sampled_probs = cast(torch.Tensor, probs)  # computed whenever a row samples
            tokens = rejection_sample(sampled_probs[start : start + count], seq.draft_ids, None, generator)
        emitted.append(tokens)
        rows.extend(range(start, start + len(tokens)))
        start += count
    chosen = torch.tensor([t for ts in emitted for t in ts], device=logits.device)
    # the accepted rows' logits only when logprobs are asked (a copy of [rows, vocab])
    flat = sampled_tokens(
        constrained[rows] if batch.num_logprobs >= 0 else constrained, chosen, batch.num_logprobs
    )
    out, at = [], 0
    for tokens in emitted:
        out.append(flat[at : at + len(tokens)])
        at += len(tokens)
    return out


def _row_batch(seqs: list[Sequence], logits: torch.Tensor, generator) -> SamplingBatch:
    """Sampling settings per row: row i of a sequence sees its output extended by draft[:i]."""
    params, prompts, outputs, eos = [], [], [], []
    for seq in seqs:
        prompt, output = seq.token_ids[: seq.num_prompt_tokens], seq.output_ids
        for i in range(1 + len(seq.draft_ids)):
            params.append(seq.params)
            prompts.append(prompt)
            outputs.append(output + seq.draft_ids[:i])
            eos.append(seq.eos_ids)
    rows = len(params)
    return SamplingBatch.build(
        params, prompts, outputs, [None] * rows, logits.shape[-1], logits.device, eos, generator
    )
