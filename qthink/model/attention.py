"""GQA attention over a paged KV cache: slot writes, per-sequence prefill, batched decode."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qthink.config import ModelConfig
from qthink.kernels import kernel_ops, linear_kernels_available
from qthink.model.layers import RMSNorm, apply_rotary
from qthink.model.quant import shared_input_linears


@dataclass
class AttentionMetadata:
    """Where a step's tokens sit in the paged cache; built once per step, shared by all layers.

    Tokens of all sequences are flattened into one [T] batch. Sequence i owns the query
    rows `query_starts[i]:query_starts[i] + query_lens[i]` and attends to its first
    `context_lens[i]` cache slots, listed in `context_slots[i]`.
    """

    slot_mapping: torch.Tensor  # [T] cache slot each new token's K/V is written to
    query_lens: list[int]
    context_lens: list[int]
    context_slots: list[torch.Tensor]  # per sequence: [context_len] slots in order
    decode_slots: torch.Tensor | None = None  # [B, max_ctx] padded slots when all query_lens == 1
    decode_mask: torch.Tensor | None = None  # [B, 1, 1, max_ctx] True where a slot is attended
    decode_lens: torch.Tensor | None = None  # [B] int64 context lengths, with decode_slots

    @property
    def is_decode(self) -> bool:
        return self.decode_slots is not None


@dataclass
class KVCache:
    """One layer's cache: [num_slots, kv_heads, head_dim] for keys and for values. An 8-bit
    cache (int8 or fp8) also keeps one scale per slot and head: [num_slots, kv_heads]."""

    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None

    # Largest magnitude each 8-bit format holds.
    LIMITS = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}

    @classmethod
    def allocate(cls, slots: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device) -> "KVCache":
        # Zeros, not empty: padded decode slots are masked, but NaN garbage would still leak.
        shape = (slots, kv_heads, head_dim)
        k, v = torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)
        if dtype not in cls.LIMITS:
            return cls(k, v)
        ones = torch.ones(slots, kv_heads, dtype=torch.float32, device=device)
        return cls(k, v, ones, ones.clone())

    def write(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        for store, scales, x in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            if scales is None:
                store.index_copy_(0, slots, x.to(store.dtype))
                continue
            limit = self.LIMITS[store.dtype]
            scale = x.float().abs().amax(-1).clamp_min(1e-8) / limit
            q = (x.float() / scale.unsqueeze(-1)).clamp(-limit, limit)
            q = (q.round() if store.dtype == torch.int8 else q).to(store.dtype)
            # Raw bytes: CPU index ops have no float8 kernels, but bytes move the same.
            store.view(torch.uint8).index_copy_(0, slots, q.view(torch.uint8))
            scales.index_copy_(0, slots, scale)

    def read(self, slots: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V at `slots` (any index shape), in `dtype`."""
        k_scale, v_scale = self.k_scale, self.v_scale
        if k_scale is None or v_scale is None:
            return self.k[slots].to(dtype), self.v[slots].to(dtype)
        k = self.k.view(torch.uint8)[slots].view(self.k.dtype).to(dtype)
        v = self.v.view(torch.uint8)[slots].view(self.v.dtype).to(dtype)
        return k * k_scale[slots].unsqueeze(-1).to(dtype), v * v_scale[slots].unsqueeze(-1).to(dtype)


class Attention(nn.Module):
    def __init__(
        self,
        hidden: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        bias: bool,
        qk_norm: bool,
        eps: float,
    ):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(head_dim, eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, eps) if qk_norm else None
        self.scale = head_dim**-0.5

    def forward(self, x, cos, sin, meta: AttentionMetadata | None = None, cache: KVCache | None = None):
        shape = x.shape[:-1]
        q = self.q_proj(x).view(*shape, self.heads, self.head_dim)
        k = self.k_proj(x).view(*shape, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(*shape, self.kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if meta is None or cache is None:
            out = self._causal(q, k, v)
        else:
            cache.write(meta.slot_mapping, k, v)
            out = self._decode(q, meta, cache) if meta.is_decode else self._prefill(q, meta, cache)
        return self.o_proj(out.reshape(*shape, self.heads * self.head_dim))

    def decode_step(self, x: torch.Tensor, cos, sin, meta: AttentionMetadata, cache: KVCache) -> torch.Tensor:
        """`forward` of a native decode step (`native_decode_step`): x [T, hidden]; q, k and v in
        one call where the weights allow, the q/k norms, RoPE and the cache write in one call, then
        attention straight from the cache."""
        q_weight = None if self.q_norm is None else self.q_norm.weight
        k_weight = None if self.k_norm is None else self.k_norm.weight
        eps = 0.0 if self.q_norm is None else self.q_norm.eps
        slots, lens = meta.decode_slots, meta.decode_lens
        ops = kernel_ops()
        q, k, v = shared_input_linears(x, (self.q_proj, self.k_proj, self.v_proj))
        scales = (cache.k_scale, cache.v_scale)
        q = ops.qk_norm_rope_cache(
            q, k, v, q_weight, k_weight, eps, cos, sin, cache.k, cache.v, meta.slot_mapping, *scales
        )
        out = ops.decode_attention(q, cache.k, cache.v, slots, lens, self.scale, *scales)
        return self.o_proj(out.view(x.shape[0], self.heads * self.head_dim))

    def _causal(self, q, k, v):
        """Whole sequences without a cache, [B, T, heads, dim] (training, reference checks)."""
        q, k, v = (t.transpose(-3, -2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=True)
        return out.transpose(-3, -2)

    def _prefill(self, q, meta: AttentionMetadata, cache: KVCache):
        outs, start = [], 0
        for qlen, ctx, slots in zip(meta.query_lens, meta.context_lens, meta.context_slots):
            qi = q[start : start + qlen].transpose(0, 1)  # [heads, qlen, dim]
            ki, vi = (t.transpose(0, 1) for t in cache.read(slots, q.dtype))  # [kv_heads, ctx, dim]
            if qlen == ctx:
                o = F.scaled_dot_product_attention(
                    qi, ki, vi, is_causal=True, scale=self.scale, enable_gqa=True
                )
            else:  # a chunk after cached tokens: query j sits at position ctx - qlen + j
                rows = torch.arange(qlen, device=q.device)[:, None] + (ctx - qlen)
                mask = torch.arange(ctx, device=q.device)[None, :] <= rows
                o = F.scaled_dot_product_attention(
                    qi, ki, vi, attn_mask=mask, scale=self.scale, enable_gqa=True
                )
            outs.append(o.transpose(0, 1))
            start += qlen
        return torch.cat(outs, dim=0)

    def _decode(self, q, meta: AttentionMetadata, cache: KVCache):
        if _native_attention(q.dtype, q.device, q.shape[-1], cache):  # the cache read in place, no copy
            cached = (cache.k, cache.v, meta.decode_slots, meta.decode_lens, self.scale)
            return kernel_ops().decode_attention(q.contiguous(), *cached, cache.k_scale, cache.v_scale)
        # One query per sequence: fold the query heads of each KV group into the query-length
        # axis, so GQA needs no repeated K/V.
        batch, group = q.shape[0], self.heads // self.kv_heads
        qg = q.view(batch, self.kv_heads, group, self.head_dim)
        assert meta.decode_slots is not None  # is_decode
        k, v = (t.transpose(1, 2) for t in cache.read(meta.decode_slots, q.dtype))  # [B, kv_heads, ctx, dim]
        o = F.scaled_dot_product_attention(qg, k, v, attn_mask=meta.decode_mask, scale=self.scale)
        return o.reshape(batch, self.heads, self.head_dim)


NATIVE_DECODE_ROWS = 16  # tokens up to which a decode step takes the fused native path


def native_decode_step(h: torch.Tensor, meta: AttentionMetadata, cache: KVCache, cfg: ModelConfig) -> bool:
    """A decode step of a few bf16 tokens against a bf16, int8 or fp8 cache on a CPU with the
    native kernels: each layer is a handful of native calls (`DecoderLayer.decode_step`)."""
    few_tokens = meta.is_decode and h.shape[0] <= NATIVE_DECODE_ROWS and h.device.type == "cpu"
    return few_tokens and _native_attention(h.dtype, h.device, cfg.head_dim, cache)


def _native_attention(dtype: torch.dtype, device: torch.device, head_dim: int, cache: KVCache) -> bool:
    """The native decode kernel takes bf16 queries, a bf16, int8 or fp8 CPU cache and heads of
    32k values."""
    cache_format = cache.k.dtype == torch.bfloat16 or cache.k.dtype in KVCache.LIMITS
    on_cpu = device.type == cache.k.device.type == "cpu"
    bf16 = dtype == torch.bfloat16 and head_dim % 32 == 0
    return cache_format and on_cpu and bf16 and linear_kernels_available()
