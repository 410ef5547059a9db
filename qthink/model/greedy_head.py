"""The output layer's greedy token for each row: in one native pass over its weights where it
can, without the [rows, vocab] logits, and over each distinct weight row once."""

import torch
from torch import nn

from qthink.kernels import kernel_ops
from qthink.model.quant import Bf16Linear, native_cpu

PREFIX = 32  # weights per row whose bytes group rows that may be copies of each other
WORTH_IT = 0.25  # share of rows that must be copies before a deduplicated copy is kept


class GreedyHead:
    """argmax of lm_head(h) per row as the sampler takes it (float32 of the layer's output, ties
    to the lowest token id). A bf16 layer on a CPU with the native kernels scores and compares
    in one pass (`greedy_head`); any other computes the logits.

    A weight row equal to an earlier one scores the same and so never wins over it: when many
    rows are such copies (a vocabulary padded with one filler row, as qthink-nano's unused
    tokens), the pass runs over the distinct rows only and maps back to token ids."""

    def __init__(self, lm_head: nn.Module):
        self.lm_head = lm_head
        self.weight: torch.Tensor | None = None  # the native kernel's weights (distinct rows)
        self.token_ids: torch.Tensor | None = None  # their token ids, when rows were dropped
        if isinstance(lm_head, Bf16Linear) and lm_head.bias is None and _native(lm_head.weight):
            self.weight = lm_head.weight
            kept = distinct_rows(lm_head.weight.detach())
            if kept is not None:
                self.weight, self.token_ids = lm_head.weight.detach()[kept].contiguous(), kept

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """int64 [rows]: the greedy token of each row of h [rows, hidden]."""
        if self.weight is None or h.dtype != torch.bfloat16 or h.device.type != "cpu":
            return self.lm_head(h).float().max(-1).indices
        best = kernel_ops().greedy_head(h.contiguous(), self.weight)
        return best if self.token_ids is None else self.token_ids[best]


def distinct_rows(weight: torch.Tensor) -> torch.Tensor | None:
    """Ids of the rows that are not a copy of an earlier row, in order; None when fewer than
    WORTH_IT of the rows are copies. Rows are grouped by their first PREFIX weights, and each is
    compared in full with its group's first row only (a cheap pass for a model without copies)."""
    n, k = weight.shape
    width = min(PREFIX, k) // 4 * 4  # whole int64 words of bf16
    if n < 2 or width == 0:
        return None
    prefix = weight[:, :width].contiguous().view(torch.int64)
    _, group = torch.unique(prefix, dim=0, return_inverse=True)
    if group.max() + 1 > (1 - WORTH_IT) * n:
        return None
    ids = torch.arange(n)
    first = torch.full((int(group.max()) + 1,), n).scatter_reduce(0, group, ids, "amin")[group]
    copy = torch.zeros(n, dtype=torch.bool)
    for start in range(0, n, 8192):
        rows = slice(start, start + 8192)
        copy[rows] = (weight[rows] == weight[first[rows]]).all(-1) & (first[rows] != ids[rows])
    return None if copy.sum() < WORTH_IT * n else ids[~copy]


def _native(weight: torch.Tensor) -> bool:
    return (
        weight.dtype == torch.bfloat16 and weight.dim() == 2 and weight.is_contiguous() and native_cpu(weight)
    )
