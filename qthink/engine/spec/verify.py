"""Verification step: the target's logits at each drafted position, processed exactly as the
sampler processes them, turned into the tokens each speculating sequence emits."""

import torch

from qthink.engine.sampler import SampledToken, SamplingBatch, apply_penalties, filter_logits, sampled_tokens
from qthink.engine.sequence import Sequence
from qthink.engine.spec.rejection import rejection_sample, verify_greedy


def verify_drafts(
    logits: torch.Tensor, seqs: list[Sequence], global_generator: torch.Generator | None
) -> list[list[SampledToken]]:
    """logits: raw float32 [sum(1 + len(draft)), V], each sequence's rows consecutive, row i
    after its text and draft_ids[:i]. Returns each sequence's emitted tokens with logprobs."""
    counts = [1 + len(s.draft_ids) for s in seqs]
    for seq, start in zip(seqs, _starts(counts)):
        for i, mask in enumerate(grammar_masks(seq)):
            if mask is not None:
                logits[start + i].masked_fill_(~mask.to(logits.device), float("-inf"))
    batch = _row_batch(seqs, logits, global_generator)
    processed = apply_penalties(logits, batch)
    best = processed.max(-1).indices.tolist()
    probs = None if batch.all_greedy else filter_logits(processed, batch).softmax(-1)
    emitted, rows = [], []
    for seq, start, count in zip(seqs, _starts(counts), counts):
        if seq.params.greedy:
            tokens = verify_greedy(best[start : start + count], seq.draft_ids)
        else:
            generator = seq.generator or global_generator
            tokens = rejection_sample(probs[start : start + count], seq.draft_ids, None, generator)
        emitted.append(tokens)
        rows.extend(range(start, start + len(tokens)))
    flat = sampled_tokens(logits[rows], torch.tensor([t for ts in emitted for t in ts]), batch.num_logprobs)
    out, at = [], 0
    for tokens in emitted:
        out.append(flat[at : at + len(tokens)])
        at += len(tokens)
    return out


def _starts(counts: list[int]) -> list[int]:
    starts, at = [], 0
    for c in counts:
        starts.append(at)
        at += c
    return starts


def _row_batch(seqs: list[Sequence], logits: torch.Tensor, generator) -> SamplingBatch:
    """Sampling settings per row: row i of a sequence sees its output extended by draft[:i],
    so penalties and min_tokens count the drafted tokens before it."""
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


def grammar_masks(seq: Sequence) -> list[torch.Tensor | None]:
    """The grammar's allowed tokens before each drafted position (None where the answer is not
    constrained yet). The matcher walks the draft and is rolled back; a drafted token the
    grammar refuses ends the walk, since verification rejects it there."""
    count = 1 + len(seq.draft_ids)
    grammar = seq.grammar
    if grammar is None:
        return [None] * count
    was_active, consumed, masks = grammar.active, 0, []
    try:
        for token in seq.draft_ids + [None]:
            mask = grammar.allowed() if grammar.active else None
            masks.append(mask)
            if token is None or (mask is not None and not mask[token]):
                break
            if not grammar.active:
                grammar.active = token == seq.thinking_tokens.fmt.end_id
            elif grammar.matcher.consume_token(token):
                consumed += 1
            else:
                break
    finally:
        grammar.matcher.rollback(consumed)
        grammar.active = was_active
    return masks + [masks[-1]] * (count - len(masks))
