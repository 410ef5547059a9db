"""Building blocks of the Qwen3 decoder: RMSNorm, rotary embeddings, the SwiGLU MLP."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from qthink.config import RopeParameters
from qthink.kernels import kernel_ops, linear_kernels_available

NATIVE_NORM_VALUES = 1 << 16  # up to a few decoding rows: larger inputs are torch's, threaded


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _native_norm(x, self.weight):  # one call instead of eight dispatches, same roundings
            return kernel_ops().rms_norm(x.contiguous(), self.weight, self.eps)
        # Normalise in float32 and scale in the input dtype, in the reference's order.
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def _native_norm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A decode step's few bf16 rows (and bf16 weights, or cos) on a CPU with the native kernels."""
    small = x.numel() <= NATIVE_NORM_VALUES and x.dtype == weight.dtype == torch.bfloat16
    return small and x.device.type == "cpu" and linear_kernels_available()


class RotaryEmbedding(nn.Module):
    """Rotate-half (NeoX) RoPE; cos/sin for a position are computed on demand from inv_freq.
    Scaled variants (linear, YaRN) change inv_freq and, for YaRN, scale cos and sin."""

    def __init__(self, head_dim: int, theta: float, rope: RopeParameters | None = None):
        super().__init__()
        rope = rope or RopeParameters(theta=theta)
        inv_freq, self.attention_scaling = rope_inv_freq(head_dim, rope)
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[..., None] * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        if self.attention_scaling == 1.0:
            return emb.cos().to(dtype), emb.sin().to(dtype)
        return (emb.cos() * self.attention_scaling).to(dtype), (emb.sin() * self.attention_scaling).to(dtype)


def rope_inv_freq(head_dim: int, rope: RopeParameters) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim / 2] and the cos/sin scale, as transformers computes them."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    pos_freqs = rope.theta**exponents
    if rope.type == "linear":
        return 1.0 / pos_freqs / rope.factor, 1.0
    if rope.type == "yarn":
        return _yarn(head_dim, rope, pos_freqs)
    return 1.0 / pos_freqs, 1.0


def _yarn(head_dim: int, rope: RopeParameters, pos_freqs: torch.Tensor) -> tuple[torch.Tensor, float]:
    """YaRN: high frequencies kept, low ones interpolated by `factor`, a linear ramp between
    the dimensions that rotate beta_fast and beta_slow times over the pretrained context."""

    original = rope.original_max_position_embeddings or 0  # always set for YaRN

    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(rope.theta))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (keep the frequency), 0: interpolate
    inv_freq = 1.0 / (rope.factor * pos_freqs) * (1 - keep) + 1.0 / pos_freqs * keep
    return inv_freq, _yarn_attention_factor(rope)


def _yarn_attention_factor(rope: RopeParameters) -> float:
    if rope.attention_factor is not None:
        return float(rope.attention_factor)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if rope.mscale and rope.mscale_all_dim:
        return float(mscale(rope.factor, rope.mscale) / mscale(rope.factor, rope.mscale_all_dim))
    return mscale(rope.factor)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., tokens, heads, head_dim]; cos/sin: [..., tokens, head_dim]."""
    if x.dim() == 3 and x.shape[-1] % 32 == 0 and _native_norm(x, cos) and cos.dtype == sin.dtype:
        return kernel_ops().rope(
            x.contiguous(), cos.contiguous(), sin.contiguous()
        )  # one call, same roundings
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Embedding(nn.Module):
    """Token embeddings: one row per vocabulary entry (left uninitialised: they are loaded)."""

    def __init__(self, vocab_size: int, hidden: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
