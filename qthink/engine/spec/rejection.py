"""Verification of drafted tokens: greedy prefix match, and rejection sampling that keeps the
target distribution (Leviathan et al. 2023; Chen et al. 2023)."""

import torch


def verify_greedy(target_tokens: list[int], draft: list[int]) -> list[int]:
    """The tokens greedy decoding emits: the target's choices while they equal the draft, then
    the first differing choice, or the bonus token after a fully accepted draft.
    `target_tokens[i]` is the target's argmax after the text and draft[:i]."""
    emitted = []
    for chosen, drafted in zip(target_tokens, draft):
        emitted.append(chosen)
        if chosen != drafted:
            return emitted
    emitted.append(target_tokens[len(draft)])
    return emitted


def rejection_sample(
    target_probs: torch.Tensor,
    draft: list[int],
    draft_probs: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """The tokens to emit after checking `draft` against the target, whose output is
    distributed exactly as sampling the target one token at a time.

    target_probs: [k + 1, V], row i the target's (fully processed) distribution after the text
    and draft[:i]. draft_probs: [k, V] the drafter's distributions, or None for a
    deterministic drafter (one-hot: token i is accepted with probability p_i(draft[i]), and a
    rejection resamples from p_i without that token). Returns the accepted drafts followed by
    one token: the resample at the first rejection, or a bonus draw from row k."""
    k = len(draft)
    rows = torch.arange(k, device=target_probs.device)
    drafted = torch.tensor(draft, dtype=torch.long, device=target_probs.device)
    p = target_probs[rows, drafted]
    q = torch.ones_like(p) if draft_probs is None else draft_probs[rows, drafted]
    uniform = torch.rand(k, generator=generator, device=target_probs.device)
    rejected = (uniform * q >= p).nonzero()
    if len(rejected) == 0:
        return draft + [_draw(target_probs[k], generator)]
    first = int(rejected[0])
    residual = _residual(
        target_probs[first], draft[first], None if draft_probs is None else draft_probs[first]
    )
    return draft[:first] + [_draw(residual, generator)]


def _residual(p: torch.Tensor, drafted: int, q: torch.Tensor | None) -> torch.Tensor:
    """norm(max(p - q, 0)): what the target still owes after the draft's share."""
    if q is None:
        residual = p.clone()
        residual[drafted] = 0.0
    else:
        residual = (p - q).clamp_min(0.0)
    total = residual.sum()
    # Zero only if p <= q everywhere, i.e. p == q, where the draft is never rejected; guard rounding.
    return residual / total if total > 0 else p


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(probs, 1, generator=generator))
