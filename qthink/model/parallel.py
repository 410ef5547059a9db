"""Tensor parallelism applied to a built model from outside: `apply_tp` splits its projections
over the ranks and adds the collectives as hooks; the layers themselves know nothing of it."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from qthink.config import ModelConfig

if TYPE_CHECKING:
    from qthink.model.qwen3 import Qwen3ForCausalLM


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

    def shard(self, tensor, dim: int | None):
        """This rank's part of `tensor` (a tensor or a safetensors slice) along `dim`; the whole
        tensor when `dim` is None."""
        if dim is None or self.size == 1:
            return tensor if isinstance(tensor, torch.Tensor) else tensor[:]
        full = tensor.shape[dim] if isinstance(tensor, torch.Tensor) else tensor.get_shape()[dim]
        step = full // self.size
        lo, hi = self.rank * step, (self.rank + 1) * step
        return tensor[lo:hi] if dim == 0 else tensor[:, lo:hi]


SINGLE = TensorParallel()


def check_divisible(cfg: ModelConfig, size: int) -> None:
    """Tensor parallelism splits heads, KV heads, MLP columns and vocabulary evenly."""
    counts = {
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
    }
    for name, value in counts.items():
        if value % size:
            raise ValueError(f"tensor_parallel_size={size} does not divide {name}={value}")


def apply_tp(model: "Qwen3ForCausalLM", tp: TensorParallel) -> None:
    """Make `model` (a Qwen3ForCausalLM, on the meta device or loaded) this rank's share: q/k/v,
    gate/up and lm_head split by output rows, o_proj and down_proj by input columns (their
    partial sums all-reduced), the vocabulary of the embeddings split by rows, the logits
    gathered. `model.tp_split_dims` then maps each split parameter's name to its dimension,
    for a loader that reads only this rank's slices."""
    model.tp = tp
    model.tp_split_dims = {}
    if tp.size == 1:
        return
    check_divisible(model.config, tp.size)
    splits: dict[nn.Linear, int] = {}
    for layer in model.model.decoder_layers():
        attn, mlp = layer.self_attn, layer.mlp
        splits.update({attn.q_proj: 0, attn.k_proj: 0, attn.v_proj: 0, attn.o_proj: 1})
        splits.update({mlp.gate_proj: 0, mlp.up_proj: 0, mlp.down_proj: 1})
        attn.heads, attn.kv_heads = attn.heads // tp.size, attn.kv_heads // tp.size
        for block in (attn, mlp):
            block.register_forward_hook(lambda _m, _args, out: tp.all_reduce(out))
    splits[model.lm_head] = 0
    for linear, dim in splits.items():
        _split_linear(linear, dim, tp)
    model.model.embed_tokens = VocabParallelEmbedding(model.model.embed_tokens.weight, tp)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.register_forward_hook(lambda _m, _args, logits: tp.all_gather_last(logits))
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    for linear, dim in splits.items():
        for param_name, param in linear.named_parameters(recurse=False):
            if param_name == "weight" or dim == 0:
                model.tp_split_dims[names[id(param)]] = dim
    model.tp_split_dims["model.embed_tokens.weight"] = 0


def _split_linear(linear: nn.Linear, dim: int, tp: TensorParallel) -> None:
    linear.weight = nn.Parameter(tp.shard(linear.weight, dim), requires_grad=False)
    if linear.bias is not None and dim == 0:
        linear.bias = nn.Parameter(tp.shard(linear.bias, 0), requires_grad=False)
    linear.out_features, linear.in_features = linear.weight.shape


class VocabParallelEmbedding(nn.Module):
    """Each rank holds a contiguous slice of the vocabulary's rows; the sum of ranks is the lookup."""

    def __init__(self, weight: torch.Tensor, tp: TensorParallel):
        super().__init__()
        self.tp = tp
        self.weight = nn.Parameter(tp.shard(weight, 0), requires_grad=False)
        self.per_rank = self.weight.shape[0]
        self.start = tp.rank * self.per_rank

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        inside = (local >= 0) & (local < self.per_rank)
        out = F.embedding(local.clamp(0, self.per_rank - 1), self.weight) * inside.unsqueeze(-1)
        return self.tp.all_reduce(out)
