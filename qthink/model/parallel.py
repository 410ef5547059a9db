"""Tensor parallelism over torch.distributed: which tensors are split, and the collectives."""

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# Split along the output rows (column parallel) or input columns (row parallel, then all-reduce).
ROW_SPLIT = ("q_proj.", "k_proj.", "v_proj.", "gate_proj.", "up_proj.", "embed_tokens.", "lm_head.")
COLUMN_SPLIT = ("o_proj.weight", "down_proj.weight")


@dataclass(frozen=True)
class TensorParallel:
    rank: int = 0
    size: int = 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(x)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=-1)

    def shard(self, name: str, tensor) -> torch.Tensor:
        """This rank's part of checkpoint tensor `name` (a safetensors slice or a tensor)."""
        dim = shard_dim(name)
        if self.size == 1 or dim is None:
            return tensor[:] if not isinstance(tensor, torch.Tensor) else tensor
        full = tensor.get_shape()[dim] if not isinstance(tensor, torch.Tensor) else tensor.shape[dim]
        step = full // self.size
        lo, hi = self.rank * step, (self.rank + 1) * step
        return tensor[lo:hi] if dim == 0 else tensor[:, lo:hi]


SINGLE = TensorParallel()


def shard_dim(name: str) -> int | None:
    if any(part in name for part in COLUMN_SPLIT):
        return 1
    if any(part in name for part in ROW_SPLIT):
        return 0
    return None


class VocabParallelEmbedding(nn.Module):
    """Each rank holds a contiguous slice of the vocabulary's rows; the sum of ranks is the lookup."""

    def __init__(self, vocab_size: int, hidden: int, tp: TensorParallel):
        super().__init__()
        self.tp = tp
        self.per_rank = vocab_size // tp.size
        self.start = tp.rank * self.per_rank
        self.weight = nn.Parameter(torch.empty(self.per_rank, hidden))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        inside = (local >= 0) & (local < self.per_rank)
        out = F.embedding(local.clamp(0, self.per_rank - 1), self.weight) * inside.unsqueeze(-1)
        return self.tp.all_reduce(out)
