"""The fused native decode step: its kernels round as torch's ops do, and a bf16, int8 or int4
model (with a bf16, int8 or fp8 KV cache) decodes the same tokens and log-probabilities through
it as through the layer-by-layer path."""

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import qthink.model.attention as attention
from qthink.kernels import kernel_ops, linear_kernels_available

needs_kernels = pytest.mark.skipif(not linear_kernels_available(), reason="no AVX-512 BF16 kernels")


def bf16(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).bfloat16()


@needs_kernels
def test_silu_mul_is_torchs_silu_times_up_for_every_bf16_value():
    """Every finite bf16 gate value (all 2^16 bit patterns but NaN), against torch's bf16 ops."""
    gate = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    gate = gate[~gate.isnan()].contiguous()
    up = bf16(gate.numel(), seed=1, scale=3.0)
    expected = F.silu(gate) * up  # silu(-inf) is NaN in both
    torch.testing.assert_close(kernel_ops().silu_mul(gate, up), expected, rtol=0, atol=0, equal_nan=True)
    rows = bf16(3, 1000, seed=2, scale=4.0), bf16(3, 1000, seed=3)  # a ragged tail
    assert torch.equal(kernel_ops().silu_mul(*rows), F.silu(rows[0]) * rows[1])


@needs_kernels
@pytest.mark.parametrize("shape", [(1, 2560), (4, 200)])
def test_add_rms_norm_is_the_add_then_the_norm(shape):
    x, residual, weight = bf16(*shape, seed=4, scale=3.0), bf16(*shape, seed=5), bf16(shape[-1], seed=6)
    total, normed = kernel_ops().add_rms_norm(x, residual, weight, 1e-6)
    assert torch.equal(total, x + residual)
    assert torch.equal(normed, kernel_ops().rms_norm(x + residual, weight, 1e-6))


@needs_kernels
@pytest.mark.parametrize("qk_norm", [True, False])
def test_qk_norm_rope_cache_is_norm_rope_and_the_cache_write(qk_norm):
    from qthink.model.layers import RotaryEmbedding

    tokens, heads, kv_heads, dim, slots_total = 3, 8, 2, 64, 20
    q, k, v = (
        bf16(tokens, heads * dim, seed=7),
        bf16(tokens, kv_heads * dim, seed=8),
        bf16(tokens, kv_heads * dim, seed=9),
    )
    q_weight, k_weight = (bf16(dim, seed=10), bf16(dim, seed=11)) if qk_norm else (None, None)
    cos, sin = RotaryEmbedding(dim, 1e6).cos_sin(torch.tensor([5, 17, 40]), torch.bfloat16)
    k_cache, v_cache = bf16(slots_total, kv_heads, dim, seed=12), bf16(slots_total, kv_heads, dim, seed=13)
    before_k, before_v = k_cache.clone(), v_cache.clone()
    slots = torch.tensor([11, 2, 19])
    out = kernel_ops().qk_norm_rope_cache(
        q, k, v, q_weight, k_weight, 1e-6, cos, sin, k_cache, v_cache, slots
    )

    def norm_rope(x, weight, h):
        x = x.view(tokens, h, dim)
        return kernel_ops().rope(kernel_ops().rms_norm(x, weight, 1e-6) if qk_norm else x, cos, sin)

    assert torch.equal(out, norm_rope(q, q_weight, heads))
    before_k[slots], before_v[slots] = norm_rope(k, k_weight, kv_heads), v.view(tokens, kv_heads, dim)
    assert torch.equal(k_cache, before_k) and torch.equal(v_cache, before_v)  # only those slots
    with pytest.raises(RuntimeError, match="slot out of range"):
        kernel_ops().qk_norm_rope_cache(
            q, k, v, q_weight, k_weight, 1e-6, cos, sin, k_cache, v_cache, slots + 9
        )


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
def test_qk_norm_rope_cache_writes_an_8_bit_cache_as_kv_cache_write_does(dtype):
    """Into an int8 or fp8 cache the fused op writes the bytes and scales KVCache.write writes
    for the same normed, rotated k and for v (max |x| / limit, x / scale rounded)."""
    from qthink.model.attention import KVCache
    from qthink.model.layers import RotaryEmbedding

    tokens, heads, kv_heads, dim, slots_total = 3, 8, 2, 128, 20
    q, k = bf16(tokens, heads * dim, seed=7), bf16(tokens, kv_heads * dim, seed=8, scale=30.0)
    v = bf16(tokens, kv_heads * dim, seed=9, scale=0.01)
    k_weight = bf16(dim, seed=11)
    cos, sin = RotaryEmbedding(dim, 1e6).cos_sin(torch.tensor([5, 17, 40]), torch.bfloat16)
    fused, expected = (KVCache.allocate(slots_total, kv_heads, dim, dtype, "cpu") for _ in range(2))
    slots = torch.tensor([11, 2, 19])
    kernel_ops().qk_norm_rope_cache(
        q, k, v, k_weight, k_weight, 1e-6, cos, sin, fused.k, fused.v, slots, fused.k_scale, fused.v_scale
    )
    rotated = kernel_ops().rope(
        kernel_ops().rms_norm(k.view(tokens, kv_heads, dim), k_weight, 1e-6), cos, sin
    )
    expected.write(slots, rotated, v.view(tokens, kv_heads, dim))
    for got, want in ((fused.k, expected.k), (fused.v, expected.v)):
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    assert torch.equal(fused.k_scale, expected.k_scale) and torch.equal(fused.v_scale, expected.v_scale)


def generate(path, logprobs: int = 3, quantization: str | None = None, kv_cache_dtype: str = "auto"):
    from qthink import LLM, SamplingParams

    llm = LLM(
        model=str(path),
        dtype="bfloat16",
        max_model_len=256,
        kv_cache_memory=1 << 24,
        quantization=quantization,
        kv_cache_dtype=kv_cache_dtype,
    )
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=logprobs)
    prompts = [{"prompt_token_ids": [151644, 872, 198, 9707 + i, 11, 1246]} for i in range(3)]
    return [
        (o.outputs[0].token_ids, [sorted(lp.items()) for lp in o.outputs[0].logprobs or []])
        for o in llm.generate(prompts, params)
    ]


@needs_kernels
@pytest.mark.parametrize(
    "config",
    [dict(), dict(model_type="qwen2", hidden_size=128, num_attention_heads=4, num_key_value_heads=2)],
    ids=["qwen3", "qwen2"],
)
def test_bf16_decode_through_the_fused_step_matches_the_layer_path(make_checkpoint, monkeypatch, config):
    """Bit for bit: the same kernels and roundings, fewer calls. Three sequences decode at once."""
    path = make_checkpoint(seed=3, **config)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fused = generate(path)
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("qthink_kernels::qk_norm_rope_cache", 0) > 0  # the fused path ran
    monkeypatch.setattr(attention, "NATIVE_DECODE_ROWS", 0)
    assert generate(path) == fused


@needs_kernels
@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_quantized_decode_through_the_fused_step_matches_the_layer_path(
    make_checkpoint, monkeypatch, quantization
):
    """int8 and int4 weights take the fused step too, q/k/v and gate/up each in one native call
    (x rounded to int8 once), and decode bit for bit what the layer-by-layer path decodes."""
    path = make_checkpoint(
        seed=5,
        hidden_size=256,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
    )

    def calls(**kwargs):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = generate(path, quantization=quantization, **kwargs)
        return out, {e.key: e.count for e in prof.key_averages()}

    fused, fused_calls = calls()
    assert fused_calls.get("qthink_kernels::qk_norm_rope_cache", 0) > 0
    assert fused_calls.get(f"qthink_kernels::linear_{quantization}_many", 0) > 0
    monkeypatch.setattr(attention, "NATIVE_DECODE_ROWS", 0)
    layered, layered_calls = calls()
    assert "qthink_kernels::qk_norm_rope_cache" not in layered_calls
    assert f"qthink_kernels::linear_{quantization}_many" not in layered_calls
    assert layered == fused


@needs_kernels
@pytest.mark.parametrize("kv_cache_dtype", ["int8", "fp8"])
def test_an_8_bit_cache_decodes_through_the_fused_step_as_through_the_layer_path(
    make_checkpoint, monkeypatch, kv_cache_dtype
):
    """An int8 or fp8 KV cache: the fused step writes it and reads it in place, and decodes bit
    for bit what the layer-by-layer path (KVCache.write, then the same attention kernel) does."""
    path = make_checkpoint(seed=3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fused = generate(path, kv_cache_dtype=kv_cache_dtype)
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("qthink_kernels::qk_norm_rope_cache", 0) > 0
    monkeypatch.setattr(attention, "NATIVE_DECODE_ROWS", 0)
    assert generate(path, kv_cache_dtype=kv_cache_dtype) == fused
