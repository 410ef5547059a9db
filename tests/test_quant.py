"""Weight-only quantization: round-trip bounds, modules against the reference, whole models."""

import pytest
import torch
from torch import nn

from qthink import LLM, SamplingParams
from qthink.kernels import linear_kernels_available
from qthink.loader import load_model
from qthink.model.quant import (
    SMALL_M,
    SMALL_M_BF16,
    Bf16Linear,
    Int4Linear,
    Int8Linear,
    dequantize_int4,
    dequantize_int8,
    int4_kernel_layout,
    int4_row_layout,
    int8_kernel_layout,
    int8_row_layout,
    quantize_int4,
    quantize_int8,
    quantize_model,
    shared_input_linears,
    unpack_int4,
)

# Rows of x around SMALL_M_BF16 and SMALL_M: native GEMV below, GEMMs above.
ROW_COUNTS = [1, SMALL_M_BF16, SMALL_M_BF16 + 1, SMALL_M, SMALL_M + 1, 40]


def weight(n: int, k: int, seed: int = 0) -> torch.Tensor:
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    w[0] *= 50  # an outlier row must not change the other rows' scales
    w[-1] = 0.25  # a constant row
    return w


@pytest.mark.parametrize("n,k", [(3, 16), (64, 100), (33, 2560)])
def test_int8_round_trip_is_within_half_a_step(n, k):
    w = weight(n, k)
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.bfloat16 and scale.shape == (n,)
    error = (dequantize_int8(q, scale) - w).abs()
    assert bool((error <= 0.501 * scale.float()[:, None]).all())


@pytest.mark.parametrize("n,k,group", [(3, 64, 64), (64, 256, 128), (33, 2560, 128), (5, 512, 256)])
def test_int4_round_trip_is_within_half_a_step(n, k, group):
    w = weight(n, k)
    packed, scale, offset = quantize_int4(w, group)
    assert packed.shape == (n, k // 2) and packed.dtype == torch.uint8
    assert scale.shape == offset.shape == (n, k // group)
    error = (dequantize_int4(packed, scale, offset) - w).view(n, k // group, group).abs()
    # Half a step, plus the bf16 rounding of the offset (the group minimum).
    bound = 0.501 * scale.float() + 2**-8 * offset.float().abs()
    assert bool((error <= bound[..., None]).all())


def test_int4_uses_one_group_for_short_rows():
    packed, scale, offset = quantize_int4(weight(4, 64), 128)
    assert scale.shape == (4, 1)


@pytest.mark.parametrize("k,group", [(100, 128), (256, 96), (384, 256)])
def test_int4_rejects_unsupported_shapes(k, group):
    with pytest.raises(ValueError, match="group size"):
        quantize_int4(weight(4, k), group)


def make_linear(n: int, k: int, bias: bool, dtype: torch.dtype) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(k, n, bias=bias).to(dtype).requires_grad_(False)


def module_reference(module: nn.Module, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if isinstance(module, Int8Linear):
        w = dequantize_int8(module.packed_rows(), module.scale, torch.float64)
    elif isinstance(module, Int4Linear):
        w = dequantize_int4(*module.row_layout(), torch.float64)
    else:
        w = linear.weight.double()
    bias = 0 if linear.bias is None else linear.bias.double()
    return x.double() @ w.T + bias


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


# Relative to the largest output. A bf16 output rounds to 2**-9; the native bf16 kernel rounds
# float32 activations to bf16, the native int8 and int4 kernels to int8 per group of 128;
# float32 accumulation stays ~1e-6.
TOLERANCE = {torch.bfloat16: 2e-2, torch.float32: 1e-2}
INT8_FLOAT32_TOLERANCE = 1e-4
INT_NATIVE_TOLERANCE = 3e-2  # int8 activations: test_kernels.py checks the exact bound
MODULES = {
    "bf16": lambda linear: Bf16Linear(linear),
    "int8": lambda linear: Int8Linear(linear),
    "int4": lambda linear: Int4Linear(linear, 128),
    "int4 (groups of 64: torch path)": lambda linear: Int4Linear(linear, 64),
}


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("rows", ROW_COUNTS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kernels", ["1", "0"])
def test_module_matches_reference(kind, rows, bias, x_dtype, kernels, monkeypatch):
    monkeypatch.setenv("QTHINK_KERNELS", kernels)
    linear = make_linear(96, 256, bias, torch.bfloat16 if kind == "bf16" else torch.float32)
    module = MODULES[kind](linear)
    x = torch.randn(1, rows, 256, generator=torch.Generator().manual_seed(1)).to(x_dtype)
    out = module(x)
    assert out.shape == (1, rows, 96) and out.dtype == x_dtype
    exact = kind == "int8" and x_dtype == torch.float32 and kernels == "0"
    tolerance = INT8_FLOAT32_TOLERANCE if exact else TOLERANCE[x_dtype]
    if kind == "int4" or (kind == "int8" and kernels == "1"):
        tolerance = INT_NATIVE_TOLERANCE
    assert relative_error(out, module_reference(module, linear, x)) < tolerance


@pytest.mark.skipif(not linear_kernels_available(), reason="no AVX-512 BF16 kernels on this CPU")
@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("rows", [1, 5])
def test_fallback_agrees_with_kernels(kind, rows, monkeypatch):
    linear = make_linear(64, 256, True, torch.bfloat16)
    module = MODULES[kind](linear)
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(2)).bfloat16()
    native = module(x)
    monkeypatch.setenv("QTHINK_KERNELS", "0")
    fallback = module(x)
    tolerance = INT_NATIVE_TOLERANCE if kind.startswith("int") else 1e-2
    assert relative_error(native, fallback.double()) < tolerance


SHARED_INPUT = {
    "int4": ([lambda lin: Int4Linear(lin, 128)] * 3, "qthink_kernels::linear_int4_many"),
    "int8": ([Int8Linear] * 3, "qthink_kernels::linear_int8_many"),
    "int4, two group sizes": ([lambda lin: Int4Linear(lin, 128), lambda lin: Int4Linear(lin, 256)] * 2, None),
    "int8, one with exact activations": (
        [Int8Linear, lambda lin: Int8Linear(lin, exact_activations=True)],
        None,
    ),
    "int4 and int8": ([lambda lin: Int4Linear(lin, 128), Int8Linear], None),
    "bf16": ([Bf16Linear] * 2, None),
}


@pytest.mark.parametrize("case", list(SHARED_INPUT))
@pytest.mark.parametrize("rows", [1, 3])
def test_shared_input_linears_are_the_modules_calls(case, rows):
    """One native call where every module rounds x alike, else a call each: the modules' outputs."""
    from torch.profiler import ProfilerActivity, profile

    makers, op = SHARED_INPUT[case]
    modules = [
        make(make_linear(n, 256, n % 2 == 0, torch.bfloat16)) for make, n in zip(makers, (64, 33, 96, 128))
    ]
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(3)).bfloat16()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        outs = shared_input_linears(x, modules)
    assert all(torch.equal(out, module(x)) for out, module in zip(outs, modules))
    called = {e.key for e in prof.key_averages() if e.key.endswith("_many")}
    assert called == ({op} if op and linear_kernels_available() else set())


@pytest.mark.parametrize("kind", list(MODULES))
def test_other_devices_take_torch_ops(kind):
    """Tensors off the CPU (here: meta, as CUDA would be) never reach the native kernels."""
    module = MODULES[kind](make_linear(32, 256, True, torch.bfloat16)).to("meta")
    out = module(torch.empty(3, 256, dtype=torch.bfloat16, device="meta"))
    assert out.shape == (3, 32) and out.device.type == "meta"


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, torch.arange(ids.shape[1])[None]).float()


def random_prompt(length: int) -> torch.Tensor:
    return torch.randint(0, 151_000, (1, length), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def prompt():
    return random_prompt(6)


# A few tokens take the native GEMVs, more take the GEMMs.
@pytest.mark.parametrize("length", [SMALL_M_BF16, SMALL_M + 4])
@pytest.mark.parametrize("quantization,tolerance", [(None, 1e-2), ("int8", 2e-2), ("int4", 5e-2)])
def test_quantized_model_stays_close(tiny_model_dir, length, quantization, tolerance, monkeypatch):
    prompt = random_prompt(length)
    model = load_model(tiny_model_dir, "bfloat16")
    monkeypatch.setenv("QTHINK_KERNELS", "0")
    expected = logits(model, prompt)  # torch's own matmuls on the bf16 weights
    monkeypatch.delenv("QTHINK_KERNELS")
    quantize_model(model, quantization)
    layer = model.model.layers[0]
    kind = {None: Bf16Linear, "int8": Int8Linear, "int4": Int4Linear}[quantization]
    for linear in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
        assert type(linear) is kind
    if quantization is None:  # the bf16 module shares the tied embeddings
        assert type(model.lm_head) is Bf16Linear
        assert model.lm_head.weight is model.model.embed_tokens.weight
    else:  # beside quantized layers, an int8 copy that keeps its activations exact
        assert type(model.lm_head) is Int8Linear and model.lm_head.exact_activations
    if quantization == "int8":
        assert not layer.mlp.down_proj.exact_activations
        assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    got = logits(model, prompt)
    assert relative_error(got, expected.double()) < tolerance
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.8


def test_float32_model_keeps_plain_linears(tiny_model_dir):
    model = load_model(tiny_model_dir, "float32")
    quantize_model(model, None)
    assert type(model.model.layers[0].mlp.up_proj) is nn.Linear


def test_qwen2_bias_survives_quantization(make_checkpoint, prompt):
    model = load_model(make_checkpoint(model_type="qwen2"), "bfloat16")
    expected = logits(model, prompt)
    quantize_model(model, "int8")
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    assert relative_error(logits(model, prompt), expected.double()) < 2e-2


def test_unknown_quantization_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="quantization must be one of"):
        quantize_model(load_model(tiny_model_dir, "bfloat16"), "int3")


@pytest.fixture(scope="module")
def int4_ready_model(make_checkpoint):
    """Rows of 128 inputs: every decoder linear can take the native int4 kernels."""
    return make_checkpoint(seed=5, hidden_size=128, intermediate_size=256, num_attention_heads=4, head_dim=32)


def greedy(model_dir, quantization: str | None) -> list[list[int]]:
    settings = dict(dtype="bfloat16", max_model_len=128, kv_cache_memory=4 << 20)
    llm = LLM(model=str(model_dir), quantization=quantization, **settings)
    prompts = [{"prompt_token_ids": list(range(3000 + 40 * i, 3016 + 40 * i))} for i in range(3)]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    return [out.outputs[0].token_ids for out in llm.generate(prompts, params)]


@pytest.fixture(scope="module")
def bf16_tokens(int4_ready_model):
    return greedy(int4_ready_model, None)


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_engine_generates_with_quantized_weights(int4_ready_model, bf16_tokens, quantization):
    reference, quantized = bf16_tokens, greedy(int4_ready_model, quantization)
    assert [len(ids) for ids in quantized] == [6, 6, 6]
    # The prefill's last logits decide the first token: it must survive weight quantization.
    assert [ids[0] for ids in quantized] == [ids[0] for ids in reference]


@pytest.mark.skipif(not linear_kernels_available(), reason="native kernels need AVX-512 BF16/VNNI")
@pytest.mark.parametrize("module", [Int8Linear, Int4Linear])
def test_tiled_gemm_under_inference_mode(module):
    """The engine runs under torch.inference_mode; the tiled GEMM's worker threads write into
    an inference tensor and must run in that mode too (a regression seen on the 4B shape)."""
    torch.set_num_threads(2)
    linear = nn.Linear(256, 4096, bias=False).to(torch.bfloat16)
    quantized = module(linear)
    x = torch.randn(64, 256, dtype=torch.bfloat16)
    expected = quantized(x)
    with torch.inference_mode():
        assert torch.equal(quantized(x), expected)


def test_engine_takes_the_int4_group_size(int4_ready_model):
    engine = LLM(
        model=str(int4_ready_model),
        dtype="bfloat16",
        quantization="int4",
        quantization_group_size=64,
        max_model_len=64,
        kv_cache_memory=1 << 20,
    ).engine
    groups = {m.group_size for m in engine.model.modules() if isinstance(m, Int4Linear)}
    assert groups == {64}
    with pytest.raises(ValueError, match="multiple of 64"):
        LLM(model=str(int4_ready_model), quantization="int4", quantization_group_size=100)


@pytest.mark.parametrize("rows", [1, 16, 17, 33, 130])
def test_int4_kernel_layout_round_trip(rows):
    """The int4 kernels' layout holds the same weights: rows padded to 32, bytes 4r..4r+3 of a
    block's vector t holding weights 4t..4t+3 of rows r and r + 16, and back."""
    packed, scale, offset = quantize_int4(weight(rows, 256), 128)
    weights, block_scale, block_offset = int4_kernel_layout(packed, scale, offset)
    blocks = (rows + 31) // 32
    assert weights.shape == (blocks * 32, 128) and block_scale.shape == block_offset.shape == (blocks, 2, 32)
    q, flat = unpack_int4(packed), weights.view(-1)
    for r in range(rows):
        block, lane, shift = r // 32, r % 16, 4 * (r % 32 // 16)
        for t in range(64):
            start = (block * 64 + t) * 64 + lane * 4
            assert torch.equal((flat[start : start + 4] >> shift) & 0xF, q[r, 4 * t : 4 * t + 4])
        assert torch.equal(block_scale[block, :, r % 32], scale[r])
    assert bool((block_scale.transpose(1, 2).reshape(-1, 2)[rows:] == 0).all())  # padding rows
    back = int4_row_layout(weights, block_scale, block_offset, rows)
    assert all(torch.equal(a, b) for a, b in zip(back, (packed, scale, offset)))


@pytest.mark.parametrize("rows", [1, 16, 17, 130])
def test_int8_kernel_layout_round_trip(rows):
    """The int8 kernels' layout holds the same bytes: rows padded to 16, bytes 4r..4r+3 of a
    block's vector t holding weights 4t..4t+3 of row r, and back."""
    q, _ = quantize_int8(weight(rows, 128))
    weights = int8_kernel_layout(q)
    assert weights.shape == ((rows + 15) // 16 * 16, 128)
    flat = weights.view(-1)
    for r in range(rows):
        for t in range(32):
            start = ((r // 16) * 32 + t) * 64 + (r % 16) * 4
            assert torch.equal(flat[start : start + 4], q[r, 4 * t : 4 * t + 4])
    assert torch.equal(int8_row_layout(weights, rows), q)
