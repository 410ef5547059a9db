"""Weight-only quantization (int8, int4) of the decoder's linear layers, and their fast matmuls.

Each replacement module keeps `nn.Linear`'s forward semantics. On a CPU with AVX-512 BF16 a
decode-sized input (a few rows) goes to the native GEMV in `qthink.kernels`, which streams
weights at close to memory bandwidth; larger inputs of int4 layers go to the same kernel's GEMM
form (int8 dot products), larger bf16 inputs of int8 layers to a tiled dequantize-then-GEMM,
the rest to torch's `F.linear`. Other devices and machines without the
kernels (or with QTHINK_KERNELS=0) take torch's own ops throughout.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from qthink.config import QUANTIZATIONS
from qthink.kernels import kernel_ops, linear_kernels_available

__all__ = [
    "Bf16Linear",
    "Int4Linear",
    "Int8Linear",
    "dequantize_int4",
    "dequantize_int8",
    "int4_kernel_layout",
    "int4_row_layout",
    "int8_kernel_layout",
    "int8_row_layout",
    "linear_kernels_available",
    "quantize_int4",
    "quantize_int8",
    "quantize_model",
    "shared_input_linears",
]

# Rows of x up to which the native GEMV beats a GEMM (benchmarks/bench_linear.py). The bf16
# GEMV streams each weight once for up to 8 rows (a verification of k <= 7 drafts), twice
# from cache above; on the 4B shapes it still beats torch's bf16 GEMM (oneDNN) at 16 rows.
# (The int4 and rounding int8 kernels are GEMMs too, twice bf16's rate: they take any M.)
SMALL_M = 16
SMALL_M_BF16 = 16
INT4_BLOCK = 64  # the packing unit along K: byte j of a block holds weights j and j + 32
NATIVE_INT4_GROUP = 128  # the native int4 kernels need groups of whole 128-weight chunks
INT8_BLOCK_ROWS = 16  # the native kernels' int8 layout (int8_kernel_layout)
INT8_NATIVE_K = 64  # the native int8 kernels need rows of a multiple of 64 inputs
INT4_BLOCK_ROWS = 32  # the native kernels' int4 layout (int4_kernel_layout)


def native_cpu(x: torch.Tensor) -> bool:
    return x.is_cpu and linear_kernels_available()


def rows_of(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1]


def _float_bias(linear: "nn.Linear | Bf16Linear") -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach().float().contiguous()


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


def _step_rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, features] for a native kernel: a step's 2-D rows as they are (no reshape)."""
    return x if x.dim() == 2 else _rows(x)


def _shaped_as(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A kernel's [rows, out_features] output in the shape of its input x."""
    return out if x.dim() == 2 else out.view(*x.shape[:-1], out.shape[-1])


def _pad_rows(t: torch.Tensor, multiple: int) -> torch.Tensor:
    return torch.cat((t, t.new_zeros(-t.shape[0] % multiple, *t.shape[1:])))


class Bf16Linear(nn.Module):
    """A bf16 `nn.Linear` whose decode-sized inputs use the native GEMV; shares the weight."""

    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.register_buffer("bias", _float_bias(linear), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._parameters["weight"], self._buffers["bias"]  # see Int4Linear.kernel_args
        assert weight is not None
        if rows_of(x) <= SMALL_M_BF16 and weight.is_contiguous() and native_cpu(x):
            return _shaped_as(kernel_ops().linear_bf16(_step_rows(x), weight, bias), x)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (q int8 [N, K], scale bf16 [N]), weight ≈ q * scale."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-8).to(torch.bfloat16)
    q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale.float()[:, None]).to(dtype)


def int8_kernel_layout(q: torch.Tensor) -> torch.Tensor:
    """The native int8 kernels' layout of `quantize_int8`'s [N, K] weights: rows in blocks of 16
    (the last padded with zero rows); in a block's 64-byte vector t, bytes 4r..4r+3 hold
    weights 4t..4t+3 of row r. [rows rounded up to 16, K] int8."""
    padded = _pad_rows(q, INT8_BLOCK_ROWS)
    k = padded.shape[1]
    blocks = padded.view(-1, INT8_BLOCK_ROWS, k // 4, 4).transpose(1, 2)  # [block, t, r, byte]
    return blocks.contiguous().view(-1, k)


def int8_row_layout(weights: torch.Tensor, rows: int) -> torch.Tensor:
    """The first `rows` rows back from `int8_kernel_layout`."""
    k = weights.shape[1]
    blocks = weights.view(-1, k // 4, INT8_BLOCK_ROWS, 4).transpose(1, 2)  # [block, r, t, byte]
    return blocks.reshape(-1, k)[:rows].contiguous()


class Int8Linear(nn.Module):
    """int8 weights with one bf16 scale per output channel; where the native kernels can take
    them (rows of a multiple of 64 inputs), in their layout (`int8_kernel_layout`). The native
    kernel rounds the activations to int8 too (a GEMV for decode, a GEMM for prefill); with
    `exact_activations` (the output layer: its logits are sampled from directly, and rounding its
    input once moved qthink-nano's next-token KL 500x) it adds the rounded remainder as a second
    int8 level, near exact at the same weight bytes."""

    weight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear | Bf16Linear, exact_activations: bool = False):
        super().__init__()
        self.exact_activations = exact_activations
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_int8(linear.weight)
        on_cpu = linear.weight.device.type == "cpu"
        self.blocked = on_cpu and self.in_features % INT8_NATIVE_K == 0 and linear_kernels_available()
        self.register_buffer("weight", int8_kernel_layout(q) if self.blocked else q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", _float_bias(linear))

    def packed_rows(self) -> torch.Tensor:
        """The int8 weights row by row, [out_features, in_features] (`quantize_int8`'s layout)."""
        return int8_row_layout(self.weight, self.out_features) if self.blocked else self.weight

    def kernel_args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(weight, scale, bias), as Int4Linear.kernel_args."""
        buffers = self._buffers
        return buffers["weight"], buffers["scale"], buffers["bias"]  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blocked and native_cpu(x) and (rows_of(x) <= SMALL_M or not self.exact_activations):
            levels = 2 if self.exact_activations else 1
            return _shaped_as(kernel_ops().linear_int8(_step_rows(x), *self.kernel_args(), levels), x)
        rows, args = _rows(x), (self.weight, self.scale, self.bias)
        if self.blocked and native_cpu(x) and x.dtype == torch.bfloat16:
            out = kernel_ops().gemm_int8(rows, *args)
        elif x.device.type == "cpu" and x.dtype == torch.bfloat16:
            # torch's int8 matmul is fast only with bf16 activations.
            out = torch.ops.aten._weight_int8pack_mm(rows, self.packed_rows(), self.scale)
            out = out if self.bias is None else out + self.bias.to(out.dtype)
        else:
            out = F.linear(rows, self.packed_rows().to(x.dtype)) * self.scale.to(x.dtype)
            out = out if self.bias is None else out + self.bias.to(out.dtype)
        return out.view(*x.shape[:-1], self.out_features)


def int4_group_size(in_features: int, group_size: int) -> int:
    """The group size used for a row of `in_features`: a row shorter than a group is one group."""
    group = min(group_size, in_features)
    if group % INT4_BLOCK or in_features % group:
        raise ValueError(
            f"int4 needs a group size that is a multiple of {INT4_BLOCK} and divides in_features; "
            f"got group_size={group_size}, in_features={in_features}"
        )
    return group


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[N, K] values 0..15 → uint8 [N, K/2]: in each block of 64, byte j = q[j] | q[j + 32] << 4."""
    n, k = q.shape
    halves = q.to(torch.uint8).view(n, k // INT4_BLOCK, 2, INT4_BLOCK // 2)
    return (halves[:, :, 0] | (halves[:, :, 1] << 4)).reshape(n, k // 2).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    n, half_k = packed.shape
    blocks = packed.view(n, half_k // (INT4_BLOCK // 2), INT4_BLOCK // 2)
    return torch.stack((blocks & 0xF, blocks >> 4), dim=2).reshape(n, half_k * 2)


def quantize_int4(
    weight: torch.Tensor, group_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise 4-bit: (packed uint8 [N, K/2], scale bf16 [N, K/G], offset bf16 [N, K/G]),
    weight ≈ q * scale + offset with q in 0..15."""
    n, k = weight.shape
    group = int4_group_size(k, group_size)
    w = weight.detach().float().view(n, k // group, group)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((high - low) / 15).clamp(min=1e-8).to(torch.bfloat16)
    offset = low.to(torch.bfloat16)
    # Round against the stored (bf16) scale and offset, so dequantization matches them exactly.
    q = torch.round((w - offset.float()[..., None]) / scale.float()[..., None]).clamp(0, 15)
    return pack_int4(q.view(n, k)), scale.contiguous(), offset.contiguous()


def dequantize_int4(
    packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    n, groups = scale.shape
    q = unpack_int4(packed).float().view(n, groups, -1)
    return (q * scale.float()[..., None] + offset.float()[..., None]).view(n, -1).to(dtype)


def int4_kernel_layout(
    packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The native int4 kernels' layout of `quantize_int4`'s output. Rows go in blocks of 32 (the
    last padded with zero rows); in a block's 64-byte vector t, bytes 4r..4r+3 hold weights
    4t..4t+3 of row r in their low nibbles and of row r + 16 in their high nibbles, so one
    vector holds 4 weights of each of 32 rows. Weights [rows rounded up to 32, K/2] uint8;
    scale and offset [blocks, groups, 32]."""
    q = _pad_rows(unpack_int4(packed), INT4_BLOCK_ROWS)
    k = q.shape[1]
    halves = q.view(-1, 2, INT4_BLOCK_ROWS // 2, k // 4, 4)  # [block, half, r, t, byte]
    bytes_ = (halves[:, 0] | (halves[:, 1] << 4)).permute(0, 2, 1, 3)  # [block, t, r, byte]
    weights = bytes_.contiguous().view(-1, k // 2)

    def by_block(values: torch.Tensor) -> torch.Tensor:
        padded = _pad_rows(values, INT4_BLOCK_ROWS)
        return padded.view(-1, INT4_BLOCK_ROWS, padded.shape[1]).transpose(1, 2).contiguous()

    return weights, by_block(scale), by_block(offset)


def int4_row_layout(
    weights: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first `rows` rows back from `int4_kernel_layout`: (packed, scale, offset) as
    `quantize_int4` made them."""
    k = weights.shape[1] * 2
    bytes_ = weights.view(-1, k // 4, INT4_BLOCK_ROWS // 2, 4).permute(0, 2, 1, 3)  # [block, r, t, byte]
    q = torch.stack((bytes_ & 0xF, bytes_ >> 4), dim=1).reshape(-1, k)[:rows]

    def by_row(values: torch.Tensor) -> torch.Tensor:
        return values.transpose(1, 2).reshape(-1, values.shape[1])[:rows].contiguous()

    return pack_int4(q), by_row(scale), by_row(offset)


class Int4Linear(nn.Module):
    """4-bit weights, packed two per byte, with a bf16 scale and offset per group of inputs;
    where the native kernels can take them, in their layout (`int4_kernel_layout`)."""

    weight: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear | Bf16Linear, group_size: int = 128):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group_size = int4_group_size(linear.in_features, group_size)
        self.native = self.group_size % NATIVE_INT4_GROUP == 0
        packed, scale, offset = quantize_int4(linear.weight, self.group_size)
        self.blocked = self.native and linear.weight.device.type == "cpu" and linear_kernels_available()
        if self.blocked:
            packed, scale, offset = int4_kernel_layout(packed, scale, offset)
        self.register_buffer("weight", packed)
        self.register_buffer("scale", scale)
        self.register_buffer("offset", offset)
        self.register_buffer("bias", _float_bias(linear))

    def row_layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(packed [out_features, in_features / 2], scale, offset [out_features, groups]) in
        `quantize_int4`'s layout."""
        if self.blocked:
            return int4_row_layout(self.weight, self.scale, self.offset, self.out_features)
        return self.weight, self.scale, self.offset

    def kernel_args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(weight, scale, offset, bias) read from the buffer table directly: nn.Module's
        attribute lookup costs ~0.5 us a tensor, and a decode step reads a thousand of them."""
        buffers = self._buffers
        return buffers["weight"], buffers["scale"], buffers["offset"], buffers["bias"]  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blocked and native_cpu(x):  # GEMV for decode, its GEMM form for prefill
            w, scale, offset, bias = self.kernel_args()
            out = kernel_ops().linear_int4(
                _step_rows(x), w, scale, offset, self.group_size, self.out_features, bias
            )
            return _shaped_as(out, x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        w = dequantize_int4(*self.row_layout(), x.dtype)
        return F.linear(_rows(x), w, bias).view(*x.shape[:-1], self.out_features)


def shared_input_linears(x: torch.Tensor, linears: Sequence[nn.Module]) -> list[torch.Tensor]:
    """Each of `linears` applied to the rows x [T, in_features] (q, k and v; gate and up): one
    native call when all are int4 with one group size, or all int8 rounding their input alike, so
    x is rounded to int8 once and the kernels' threads wake once; else one call each. The
    outputs are those of the modules' own calls, bit for bit."""
    first = linears[0]
    if not (x.dim() == 2 and native_cpu(x) and getattr(first, "blocked", False)):
        return [m(x) for m in linears]
    if isinstance(first, Int4Linear):
        int4 = [
            m for m in linears if isinstance(m, Int4Linear) and m.blocked and m.group_size == first.group_size
        ]
        if len(int4) == len(linears):
            w, scale, offset, bias = zip(*(m.kernel_args() for m in int4))
            outs = [m.out_features for m in int4]
            return kernel_ops().linear_int4_many(x, w, scale, offset, first.group_size, outs, bias)
    int8 = [m for m in linears if isinstance(m, Int8Linear) and m.blocked and not m.exact_activations]
    if len(int8) == len(linears):
        w, scale, bias = zip(*(m.kernel_args() for m in int8))
        return kernel_ops().linear_int8_many(x, w, scale, bias)
    return [m(x) for m in linears]


def _replacement(
    linear: nn.Linear | Bf16Linear, quantization: str | None, group_size: int, in_decoder: bool = True
) -> nn.Module | None:
    if quantization == "int8":
        return Int8Linear(linear, exact_activations=not in_decoder)
    if quantization == "int4":
        return Int4Linear(linear, group_size)
    if type(linear) is nn.Linear and linear.weight.dtype == torch.bfloat16:
        return Bf16Linear(linear)
    return None


def uses_native_kernels(model: nn.Module, quantization: str | None) -> bool:
    """CPU weights that are quantized or bf16 run on the native kernels where they exist."""
    weight = next(model.parameters(), None)
    if weight is None:
        return False
    return weight.device.type == "cpu" and (quantization is not None or weight.dtype == torch.bfloat16)


def quantize_model(model: nn.Module, quantization: str | None, group_size: int = 128) -> None:
    """Replace the decoder layers' `nn.Linear`s (or `Bf16Linear`s) in place: by int8 or int4
    modules, and the lm_head by an int8 one; or with `quantization=None` every bf16 linear by
    the fast bf16 module, which shares its weight (the lm_head's is often the embeddings')."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if uses_native_kernels(model, quantization):
        linear_kernels_available()  # build or load them now, at start-up, not in the first request
    targets = [
        (parent_name, parent, name, child)
        for parent_name, parent in model.named_modules()
        for name, child in parent.named_children()
        if type(child) in (nn.Linear, Bf16Linear)
    ]
    for parent_name, parent, name, linear in targets:
        in_decoder = ".layers." in f".{parent_name}."
        # Beside quantized layers the output layer goes int8 (exact activations): a tenth of a
        # 4B model's bytes per token, and the logits barely move (llama.cpp's Q4_K_M keeps it
        # at 6 bits).
        kind = quantization if in_decoder or quantization is None else "int8"
        replacement = _replacement(linear, kind, group_size, in_decoder)
        if replacement is not None:
            setattr(parent, name, replacement)
