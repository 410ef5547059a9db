"""The native linear kernels against a float64 reference, and how their build falls back."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from qthink.kernels import kernel_ops, linear_kernels_available
from qthink.model.quant import (
    dequantize_int4,
    dequantize_int8,
    int4_kernel_layout,
    int8_kernel_layout,
    quantize_int4,
    quantize_int8,
)

needs_kernels = pytest.mark.skipif(
    not linear_kernels_available(), reason="no AVX-512 BF16 kernels on this CPU"
)

# float32 accumulation of exact products: error well under 1e-5 of sum(|x| |w|) for these K.
ACCUMULATION_RTOL = 1e-5
BF16_OUTPUT_RTOL = 2**-8  # rounding the float32 result to bf16


def reference(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x @ w.T + bias, sum |x| |w|) in float64."""
    x, w = x.double(), w.double()
    out = x @ w.T + (0 if bias is None else bias.double())
    return out, x.abs() @ w.abs().T


def assert_within(out: torch.Tensor, ref: torch.Tensor, magnitude: torch.Tensor, rtol: float) -> None:
    bound = rtol * magnitude + (BF16_OUTPUT_RTOL * ref.abs() if out.dtype == torch.bfloat16 else 0) + 1e-6
    error = (out.double() - ref).abs()
    assert out.shape == ref.shape
    assert bool((error <= bound).all()), f"max error {error.max().item():.3g}, bound {bound.min().item():.3g}"


def bf16_values(*shape: int, seed: int) -> torch.Tensor:
    """Random float32 values that bf16 holds exactly, so both paths see the same inputs."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).bfloat16().float()


@needs_kernels
@pytest.mark.parametrize("n,k", [(1, 64), (5, 100), (11, 33), (67, 256), (130, 320)])
@pytest.mark.parametrize("m", range(1, 18))  # one pass up to 8 rows, then two or three
@pytest.mark.parametrize("with_bias", [False, True])
def test_bf16_kernel(n, k, m, with_bias, kernel_path):
    w, x = bf16_values(n, k, seed=1).bfloat16(), bf16_values(m, k, seed=2)
    bias = bf16_values(n, seed=3) if with_bias else None
    ref, magnitude = reference(x, w, bias)
    assert_within(kernel_ops().linear_bf16(x, w, bias), ref, magnitude, ACCUMULATION_RTOL)
    assert_within(kernel_ops().linear_bf16(x.bfloat16(), w, bias), ref, magnitude, ACCUMULATION_RTOL)


@needs_kernels
@pytest.mark.parametrize("n,k", [(16, 64), (67, 256), (130, 2560)])
def test_a_bf16_row_gets_the_same_bits_alone_or_among_16(n, k, kernel_path):
    """Greedy speculative verification needs each activation row's result to be independent of
    the other rows in the call (up to 16): on each path, alone equals together, bit for bit."""
    w, x = bf16_values(n, k, seed=1).bfloat16(), bf16_values(16, k, seed=2).bfloat16()
    together = kernel_ops().linear_bf16(x, w, None)
    for rows in (1, 5):
        for first in range(0, 16, rows):
            part = kernel_ops().linear_bf16(x[first : first + rows], w, None)
            assert torch.equal(part, together[first : first + rows])


def on_amx_and_avx512(run):
    """(run() on AMX tiles, run() with them switched off); skips on a CPU without AMX."""
    if not kernel_ops().use_amx(True):
        pytest.skip("no AMX tiles on this CPU")
    amx = run()
    kernel_ops().use_amx(False)
    try:
        return amx, run()
    finally:
        kernel_ops().use_amx(True)


@needs_kernels
def test_the_amx_path_is_a_different_sum_from_avx512():
    """The two paths really are two: on a CPU with AMX tiles the results differ in their last bits
    (another order of the same sums), so the tests that run both test both."""
    w, x = bf16_values(64, 2560, seed=1).bfloat16(), bf16_values(4, 2560, seed=2)
    amx, avx512 = on_amx_and_avx512(lambda: kernel_ops().linear_bf16(x, w, None))
    assert not torch.equal(amx, avx512)
    ref, magnitude = reference(x, w, None)
    assert_within(amx, ref, magnitude, ACCUMULATION_RTOL)


@needs_kernels
@pytest.mark.parametrize("n,k", [(1, 64), (5, 128), (67, 256), (130, 320), (9, 192)])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7, 8, 13, 17, 40])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_int8_kernel(n, k, m, with_bias, x_dtype, kernel_path):
    """The VNNI kernel rounds the activations to int8 per group of 128 (64 where 128 does not
    divide K); with two activation levels (the output layer) the rounding error is ~127x less."""
    q, scale = quantize_int8(torch.randn(n, k, generator=torch.Generator().manual_seed(1)))
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(2)).to(x_dtype)
    bias = torch.randn(n) if with_bias else None
    w = dequantize_int8(q, scale, torch.float64)
    ref, magnitude = reference(x, w, bias)
    blocked = int8_kernel_layout(q)
    group = 128 if k % 128 == 0 else 64
    for levels in (1, 2):
        out = kernel_ops().linear_int8(x, blocked, scale, bias, levels)
        output_rounding = BF16_OUTPUT_RTOL * ref.abs() if out.dtype == torch.bfloat16 else 0
        # Each level leaves at most half its step: the second's step is at most half the first's / 127.
        rounding = activation_rounding_bound(x, w, group) / (1 if levels == 1 else 254)
        bound = rounding + ACCUMULATION_RTOL * magnitude + output_rounding
        error = (out.double() - ref).abs()
        assert bool((error <= bound).all()), f"{levels} levels: max error {error.max().item():.3g}"
        assert error.max() > 0  # the activations really are rounded: the bound is the right one


@needs_kernels
def test_int8_two_level_output_layer_logits():
    """The output layer's two activation levels on 4B-shape rows (151,936 x 2,560): every logit
    within 1e-3 x max |logit| of float64, and the greedy token that of float64 on many rows."""
    n, k = 151936, 2560
    generator = torch.Generator().manual_seed(3)
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=generator)
    scale = (torch.rand(n, generator=generator) * 1e-3 + 1e-4).bfloat16()
    blocked = int8_kernel_layout(q)
    x = torch.randn(64, k, generator=torch.Generator().manual_seed(4)) * 2
    x[:, ::97] *= 30  # outlier channels, as hidden states have
    parts = zip(q.split(8192), scale.split(8192))  # float64 weights a slice at a time
    reference_logits = torch.cat([x.double() @ dequantize_int8(p, s, torch.float64).T for p, s in parts], -1)
    for rows in (slice(0, 1), slice(1, 3), slice(3, 9), slice(9, 64)):
        ref = reference_logits[rows]
        out = kernel_ops().linear_int8(x[rows], blocked, scale, None, 2).double()
        error = (out - ref).abs().amax(-1) / ref.abs().amax(-1)
        assert bool((error < 1e-3).all()), f"max relative error {error.max().item():.3g}"
        margin = ref.topk(2).values
        clear = (margin[:, 0] - margin[:, 1]) > 2e-3 * ref.abs().amax(-1)  # argmax not decided by rounding
        assert bool((out.argmax(-1) == ref.argmax(-1))[clear].all())
        assert int(clear.sum()) >= (rows.stop - rows.start) // 2


def activation_rounding_bound(x: torch.Tensor, w: torch.Tensor, group: int) -> torch.Tensor:
    """The int4 kernel rounds x to int8 per group (step max|x| / 127): at most half a step
    per element, times the weights it meets."""
    m, k = x.shape
    step = x.double().abs().view(m, k // group, group).amax(-1) / 127
    weight_mass = w.double().abs().view(w.shape[0], k // group, group).sum(-1)
    return 0.5 * step @ weight_mass.T


@needs_kernels
@pytest.mark.parametrize("n,k,group", [(1, 128, 128), (5, 256, 128), (67, 512, 256), (130, 384, 128)])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7, 8, 13, 17, 40])
@pytest.mark.parametrize("with_bias", [False, True])
def test_int4_kernel(n, k, group, m, with_bias, kernel_path):
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(1))
    packed, scale, offset = quantize_int4(weight, group)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(2))
    bias = torch.randn(n) if with_bias else None
    w = dequantize_int4(packed, scale, offset, torch.float64)
    ref, magnitude = reference(x, w, bias)
    out = kernel_ops().linear_int4(x, *int4_kernel_layout(packed, scale, offset), group, n, bias)
    error = (out.double() - ref).abs()
    bound = activation_rounding_bound(x, w, group) + ACCUMULATION_RTOL * magnitude
    assert bool((error <= bound).all()), f"max error {error.max().item():.3g}"
    assert error.max() > 0  # the activations really are rounded: the bound is the right one


@needs_kernels
@pytest.mark.parametrize("n,k,group", [(5, 256, 128), (67, 512, 256), (130, 384, 128), (64, 2560, 128)])
@pytest.mark.parametrize("m", [2, 5, 16, 17, 40])
def test_int4_tiles_give_the_vnni_kernels_bits_and_a_row_its_bits_alone(n, k, group, m):
    """On AMX-INT8 tiles the int4 kernel's integer sums are exact and its float steps are the
    VNNI kernel's: the same bits, and each row's alone (greedy verification relies on it)."""
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(1))
    args = (*int4_kernel_layout(*quantize_int4(weight, group)), group, n, torch.randn(n))
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(2))
    tiles, vnni = on_amx_and_avx512(lambda: kernel_ops().linear_int4(x, *args))
    alone = torch.cat([kernel_ops().linear_int4(x[i : i + 1], *args) for i in range(m)])
    assert torch.equal(tiles, vnni) and torch.equal(tiles, alone)


@needs_kernels
@pytest.mark.parametrize("n,k", [(16, 64), (67, 384), (64, 2560)])
@pytest.mark.parametrize("m", [2, 5, 16, 17, 40])
@pytest.mark.parametrize("levels", [1, 2])
def test_int8_tiles_give_the_vnni_kernels_bits_and_a_row_its_bits_alone(n, k, m, levels):
    """As for int4: on AMX-INT8 tiles w . x is exact and 128 x sum(x) turns it into the VNNI
    kernel's integer sums, so the bits are the VNNI kernel's, and each row's alone."""
    q, scale = quantize_int8(torch.randn(n, k, generator=torch.Generator().manual_seed(1)))
    args = (int8_kernel_layout(q), scale, torch.randn(n), levels)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(2))
    tiles, vnni = on_amx_and_avx512(lambda: kernel_ops().linear_int8(x, *args))
    alone = torch.cat([kernel_ops().linear_int8(x[i : i + 1], *args) for i in range(m)])
    assert torch.equal(tiles, vnni) and torch.equal(tiles, alone)


@needs_kernels
@pytest.mark.parametrize("n,k", [(67, 512), (130, 384)])
@pytest.mark.parametrize("m", [1, 7, 40])
@pytest.mark.parametrize("with_bias", [False, True])
def test_int4_kernel_bf16_rows(n, k, m, with_bias):
    """bf16 activations in, bf16 out (prefill's rows): the output also rounds to bf16."""
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(1))
    packed, scale, offset = quantize_int4(weight, 128)
    x = bf16_values(m, k, seed=2).bfloat16()
    bias = torch.randn(n) if with_bias else None
    w = dequantize_int4(packed, scale, offset, torch.float64)
    ref, magnitude = reference(x, w, bias)
    out = kernel_ops().linear_int4(x, *int4_kernel_layout(packed, scale, offset), 128, n, bias)
    assert out.dtype == torch.bfloat16
    error = (out.double() - ref).abs()
    bound = activation_rounding_bound(x.float(), w, 128) + ACCUMULATION_RTOL * magnitude
    bound += BF16_OUTPUT_RTOL * ref.abs()
    assert bool((error <= bound).all()), f"max error {error.max().item():.3g}"


@needs_kernels
@pytest.mark.parametrize("n,k", [(5, 256), (700, 384)])
@pytest.mark.parametrize("m", [1, 9, 40])
@pytest.mark.parametrize("with_bias", [False, True])
def test_tiled_gemm_int8(n, k, m, with_bias):
    """Large M: int8 weight tiles dequantized to bf16, then torch's GEMM; x is bf16."""
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(1))
    x = bf16_values(m, k, seed=2).bfloat16()
    bias = torch.randn(n) if with_bias else None
    q, scale = quantize_int8(weight)
    ref, magnitude = reference(x, dequantize_int8(q, scale, torch.float64), bias)
    # The tiles round each dequantized weight to bf16 once more.
    assert_within(
        kernel_ops().gemm_int8(x, int8_kernel_layout(q), scale, bias), ref, magnitude, BF16_OUTPUT_RTOL
    )


def int4_parts(shapes: list[tuple[int, int]], group: int) -> list[tuple[torch.Tensor, ...]]:
    """int4_kernel_layout weights of the [n, k] shapes, random, each with a bias."""
    parts = []
    for i, (n, k) in enumerate(shapes):
        weight = torch.randn(n, k, generator=torch.Generator().manual_seed(10 + i))
        parts.append((*int4_kernel_layout(*quantize_int4(weight, group)), torch.randn(n)))
    return parts


@needs_kernels
@pytest.mark.parametrize("m", [1, 2, 5, 7, 13])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_many_is_each_matrix_on_its_own(m, dtype):
    """One call over matrices that share x (q, k, v: rows not a multiple of 32 too) gives each
    matrix's own call bit for bit; any output can go without a bias."""
    shapes, group = [(96, 384), (40, 384), (33, 384)], 128
    parts = int4_parts(shapes, group)
    x = torch.randn(m, 384, generator=torch.Generator().manual_seed(3)).to(dtype)
    biases = [parts[0][3], None, parts[2][3]]
    outs = kernel_ops().linear_int4_many(
        x,
        [p[0] for p in parts],
        [p[1] for p in parts],
        [p[2] for p in parts],
        group,
        [n for n, _ in shapes],
        biases,
    )
    for out, (w, scale, offset, _), (n, _), bias in zip(outs, parts, shapes, biases):
        assert out.dtype == dtype and torch.equal(
            out, kernel_ops().linear_int4(x, w, scale, offset, group, n, bias)
        )


@needs_kernels
@pytest.mark.parametrize("m", [1, 3, 9])
@pytest.mark.parametrize("levels", [1, 2])
def test_int8_many_is_each_matrix_on_its_own(m, levels):
    weights = [torch.randn(n, 320, generator=torch.Generator().manual_seed(n)) for n in (48, 17, 64)]
    quantized = [quantize_int8(w) for w in weights]
    blocked = [int8_kernel_layout(q) for q, _ in quantized]
    biases = [torch.randn(48), torch.randn(17), None]
    x = bf16_values(m, 320, seed=4).bfloat16()
    outs = kernel_ops().linear_int8_many(x, blocked, [s for _, s in quantized], biases, levels)
    for out, w, (_, scale), bias in zip(outs, blocked, quantized, biases):
        assert torch.equal(out, kernel_ops().linear_int8(x, w, scale, bias, levels))


@needs_kernels
def test_many_kernels_reject_mismatched_lists():
    (w, scale, offset, _), (w2, scale2, offset2, _) = int4_parts([(32, 256), (32, 512)], 128)
    x = torch.randn(1, 256)
    with pytest.raises(RuntimeError, match="lists of one length"):
        kernel_ops().linear_int4_many(x, [w, w], [scale], [offset, offset], 128, [32, 32], [None, None])
    with pytest.raises(RuntimeError, match="K = 256"):
        kernel_ops().linear_int4_many(
            x, [w, w2], [scale, scale2], [offset, offset2], 128, [32, 32], [None, None]
        )
    q, s = quantize_int8(torch.randn(16, 256))
    q2, s2 = quantize_int8(torch.randn(16, 128))
    with pytest.raises(RuntimeError, match="K = 256"):
        kernel_ops().linear_int8_many(
            x, [int8_kernel_layout(q), int8_kernel_layout(q2)], [s, s2], [None, None]
        )
    with pytest.raises(RuntimeError, match="lists of one length"):
        kernel_ops().linear_int8_many(x, [], [], [])


@needs_kernels
def test_kernels_reject_unsupported_shapes():
    packed, scale, offset = int4_kernel_layout(*quantize_int4(torch.randn(4, 256), 128))
    with pytest.raises(RuntimeError, match="multiple of 128"):
        kernel_ops().linear_int4(torch.randn(1, 256), packed, scale, offset, 64, 4, None)
    with pytest.raises(RuntimeError, match=r"\[M, 256\]"):
        kernel_ops().linear_int4(torch.randn(1, 128), packed, scale, offset, 128, 4, None)
    with pytest.raises(RuntimeError, match="rounded up to 32"):
        kernel_ops().linear_int4(torch.randn(1, 256), packed, scale, offset, 128, 33, None)
    with pytest.raises(RuntimeError, match="contiguous bf16"):
        kernel_ops().linear_bf16(torch.randn(1, 8), torch.randn(4, 16).bfloat16()[:, :8], None)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        kernel_ops().linear_bf16(torch.randn(1, 8).double(), torch.randn(4, 8).bfloat16(), None)
    q, scale8 = quantize_int8(torch.randn(4, 100))
    with pytest.raises(RuntimeError, match="K a multiple of 64"):
        kernel_ops().linear_int8(torch.randn(1, 100), q, scale8, None)


def test_switch_off_with_environment(monkeypatch):
    monkeypatch.setenv("QTHINK_KERNELS", "0")
    assert not linear_kernels_available()


def test_failed_build_falls_back_with_one_warning(tmp_path):
    """A source that does not compile leaves the kernels unavailable and warns once."""
    broken = tmp_path / "broken.cpp"
    broken.write_text('#error "this does not compile"\n')
    script = textwrap.dedent(
        f"""
        import warnings
        from pathlib import Path
        import qthink.kernels.build as build
        build.REQUIRED_CPU_FLAGS = ()
        build.SOURCES = [Path({str(broken)!r})]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            print(build.linear_kernels_available(), build.linear_kernels_available())
        print(len(caught), caught[0].message if caught else "")
        """
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "QTHINK_KERNELS": "1"}
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=repo, timeout=120
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "False False", result.stderr
    assert lines[1].startswith("1 qthink: the AVX-512 kernels could not be built")


@needs_kernels
def test_torch_ops_on_one_thread_keeps_the_kernels_threads():
    """Inside the block torch runs on one thread and the kernels on torch's count before it;
    both come back after, and the kernels' results do not change."""
    from qthink.kernels.threads import torch_ops_on_one_thread

    before = torch.get_num_threads()
    w, x = bf16_values(300, 256, seed=1).bfloat16(), bf16_values(1, 256, seed=2)
    expected = kernel_ops().linear_bf16(x, w, None)
    with torch_ops_on_one_thread():
        assert torch.get_num_threads() == 1
        assert kernel_ops().get_num_threads() == before
        assert torch.equal(kernel_ops().linear_bf16(x, w, None), expected)
    assert torch.get_num_threads() == before
    assert kernel_ops().get_num_threads() == before


@needs_kernels
@pytest.mark.parametrize("shape", [(1, 2560), (3, 32, 128), (2, 100)])
def test_rms_norm_matches_torch(shape):
    """The native RMSNorm rounds as torch's formula does (float32 normalisation, bf16, times
    the bf16 weight): only the order of the sum of squares differs, so at most one bf16 step,
    and rarely."""
    x = (torch.randn(*shape, generator=torch.Generator().manual_seed(3)) * 4).bfloat16()
    weight = torch.randn(shape[-1], generator=torch.Generator().manual_seed(4)).bfloat16()
    h = x.float()
    expected = weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    out = kernel_ops().rms_norm(x, weight, 1e-6)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    steps = (out.float() - expected.float()).abs() / expected.float().abs().clamp_min(1e-30) * 2**8
    assert bool((steps <= 1.0 + 1e-6).all())
    assert (out != expected).float().mean() < 0.01


@needs_kernels
@pytest.mark.parametrize("tokens,heads", [(1, 32), (3, 8)])
def test_rope_matches_torch_exactly(tokens, heads):
    """The native rotate-half RoPE rounds each bf16 op as torch does: identical bits."""
    from qthink.model.layers import RotaryEmbedding

    x = torch.randn(tokens, heads, 128, generator=torch.Generator().manual_seed(5)).bfloat16()
    cos, sin = RotaryEmbedding(128, 1e6).cos_sin(torch.arange(7, 7 + tokens), torch.bfloat16)
    half = 64
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    expected = x * cos.unsqueeze(-2) + rotated * sin.unsqueeze(-2)
    assert torch.equal(kernel_ops().rope(x, cos, sin), expected)


@needs_kernels
def test_changing_the_thread_count_never_hangs():
    """Each change of the kernels' thread count replaces their pool; a worker that starts only
    after a job, or after its pool began to stop, must still see the stop (one such worker once
    slept forever, and the join waiting for it hung the process)."""
    code = textwrap.dedent(
        """
        import torch
        from qthink.kernels import kernel_ops, linear_kernels_available
        assert linear_kernels_available()
        ops = kernel_ops()
        q, k = torch.randn(1, 4, 32).bfloat16(), torch.randn(64, 2, 32).bfloat16()
        slots, lens = torch.arange(64)[None], torch.tensor([64])
        for i in range(300):
            ops.set_num_threads(2 + i % 3)
            ops.decode_attention(q, k, k, slots, lens, 0.1)
        print("done")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "done", result.stderr
