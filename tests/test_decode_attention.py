"""The native decode attention reads the paged bf16 cache in place and matches the gathered path."""

import pytest
import torch

from qthink.kernels import kernel_ops, linear_kernels_available
from qthink.model.attention import Attention, AttentionMetadata, KVCache

needs_kernels = pytest.mark.skipif(not linear_kernels_available(), reason="no AVX-512 BF16 kernels")


def reference(q, k_cache, v_cache, slots, lens, scale):
    """float64 softmax(q k^T * scale) v over each sequence's first lens[b] slots."""
    batch, heads, dim = q.shape
    group = heads // k_cache.shape[1]
    out = torch.empty(batch, heads, dim, dtype=torch.float64)
    for b in range(batch):
        ctx = slots[b, : lens[b]]
        k = k_cache[ctx].double().repeat_interleave(group, dim=1)  # [ctx, heads, dim]
        v = v_cache[ctx].double().repeat_interleave(group, dim=1)
        weights = torch.einsum("hd,thd->ht", q[b].double(), k).mul(scale).softmax(-1)
        out[b] = torch.einsum("ht,thd->hd", weights, v)
    return out


def random_case(batch, heads, kv_heads, dim, max_len, seed):
    gen = torch.Generator().manual_seed(seed)
    slots_total = batch * max_len + 7
    k_cache = torch.randn(slots_total, kv_heads, dim, generator=gen).bfloat16()
    v_cache = torch.randn(slots_total, kv_heads, dim, generator=gen).bfloat16()
    q = torch.randn(batch, heads, dim, generator=gen).mul(2).bfloat16()
    lens = torch.randint(1, max_len + 1, (batch,), generator=gen)
    lens[0] = max_len
    slots = torch.stack([torch.randperm(slots_total, generator=gen)[:max_len] for _ in range(batch)])
    return q, k_cache, v_cache, slots, lens


@needs_kernels
@pytest.mark.parametrize(
    "batch,heads,kv_heads,dim,max_len",
    [(1, 4, 4, 32, 1), (3, 8, 2, 64, 37), (2, 12, 2, 96, 600), (5, 32, 8, 128, 300), (2, 8, 4, 256, 300)],
)
def test_matches_float64_reference(batch, heads, kv_heads, dim, max_len):
    q, k_cache, v_cache, slots, lens = random_case(batch, heads, kv_heads, dim, max_len, seed=dim)
    scale = dim**-0.5
    out = kernel_ops().decode_attention(q, k_cache, v_cache, slots, lens, scale)
    expected = reference(q, k_cache, v_cache, slots, lens, scale)
    # bf16 output (2**-9 relative) of float32 arithmetic on bf16 inputs
    assert (out.double() - expected).abs().max() < 1e-2 * expected.abs().max()


@needs_kernels
@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.int8, torch.float8_e4m3fn])
def test_attention_layer_takes_the_kernel_and_agrees_with_torch(monkeypatch, kv_dtype):
    """Attention._decode with the kernel against its own gathered-K/V torch path, for each
    cache format."""
    layer = Attention(hidden=256, heads=8, kv_heads=2, head_dim=32, bias=False, qk_norm=True, eps=1e-6)
    layer = layer.bfloat16()
    q, k_cache, v_cache, slots, lens = random_case(4, 8, 2, 32, 50, seed=1)
    width = slots.shape[1]
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(4, dtype=torch.long),
        query_lens=[1] * 4,
        context_lens=lens.tolist(),
        context_slots=[slots[b, : lens[b]] for b in range(4)],
        decode_slots=slots,
        decode_mask=(torch.arange(width)[None, :] < lens[:, None])[:, None, None, :],
        decode_lens=lens,
    )
    cache = KVCache.allocate(k_cache.shape[0], 2, 32, kv_dtype, "cpu")
    cache.write(torch.arange(k_cache.shape[0]), k_cache, v_cache)
    native = layer._decode(q, meta, cache)
    direct = kernel_ops().decode_attention(
        q, cache.k, cache.v, slots, lens, layer.scale, cache.k_scale, cache.v_scale
    )
    assert torch.equal(native, direct)
    monkeypatch.setenv("QTHINK_KERNELS", "0")
    torch_path = layer._decode(q, meta, cache)
    assert (native.float() - torch_path.float()).abs().max() < 2e-2 * torch_path.float().abs().max()


@needs_kernels
def test_long_contexts_split_into_chunks_match_the_reference():
    """Contexts of several chunks (256 slots each) with peaked scores: the chunks' running sums,
    rescaled to one peak, give the softmax over the whole context."""
    q, k_cache, v_cache, slots, lens = random_case(3, 16, 4, 64, 1100, seed=11)
    lens[1:] = torch.tensor([257, 700])
    q = q.float().mul(4).bfloat16()  # a few keys dominate: later chunks raise the peak
    scale = 64**-0.5
    out = kernel_ops().decode_attention(q, k_cache, v_cache, slots, lens, scale)
    expected = reference(q, k_cache, v_cache, slots, lens, scale)
    assert (out.double() - expected).abs().max() < 1e-2 * expected.abs().max()


@needs_kernels
def test_the_thread_count_changes_no_bits():
    """Chunk bounds are fixed and the KV heads split only the work: one thread or two, the same bits."""
    ops = kernel_ops()
    before = ops.get_num_threads()
    q, k_cache, v_cache, slots, lens = random_case(2, 32, 8, 128, 600, seed=5)
    outs = []
    for threads in (1, 2, 3):
        ops.set_num_threads(threads)
        outs.append(ops.decode_attention(q, k_cache, v_cache, slots, lens, 0.1))
        outs.append(ops.decode_attention(q[:1], k_cache, v_cache, slots[:1], lens[:1], 0.1))
    ops.set_num_threads(before)
    assert all(torch.equal(outs[0], o) for o in outs[::2])
    assert all(torch.equal(outs[0][:1], o) for o in outs[1::2])


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("context,rows", [(1, 1), (40, 1), (600, 1), (300, 5)])
def test_an_8_bit_cache_is_read_in_place(dtype, context, rows):
    """int8 and fp8 caches (a scale per slot and head): the kernel widens each block's rows in
    place and folds the scales into scores and weights, matching attention over the dequantized
    cache; verification rows keep their bits alone or together."""
    q, k_cache, v_cache, slots, lens = random_case(rows + 1, 32, 8, 128, context + rows, seed=context + rows)
    lens[:rows] = torch.arange(context + 1, context + rows + 1)
    slots[:rows] = slots[rows - 1]
    cache = KVCache.allocate(k_cache.shape[0], 8, 128, dtype, "cpu")
    every = torch.arange(k_cache.shape[0])
    cache.write(every, k_cache.float().mul(3).bfloat16(), v_cache)  # k scales differ from v's
    k, v = cache.read(every, torch.float64)
    scale = 128**-0.5
    ops = kernel_ops()
    out = ops.decode_attention(q, cache.k, cache.v, slots, lens, scale, cache.k_scale, cache.v_scale)
    expected = reference(q, k, v, slots, lens, scale)
    assert (out.double() - expected).abs().max() < 1e-2 * expected.abs().max()
    for b in range(rows + 1):
        one = slice(b, b + 1)
        alone = ops.decode_attention(
            q[one], cache.k, cache.v, slots[one].contiguous(), lens[one], scale, cache.k_scale, cache.v_scale
        )
        assert torch.equal(out[b], alone[0])


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
def test_every_8_bit_value_widens_exactly(dtype):
    """One key (weight exactly 1) and scale 1: the output is the V row itself, so each of the
    format's 254 or 256 byte values (fp8 subnormals and the largest values included) must widen
    to its exact value."""
    codes = torch.arange(256, dtype=torch.uint8)
    if dtype == torch.float8_e4m3fn:
        codes = codes[(codes & 0x7F) != 0x7F]  # the two NaN codes
    rows = (len(codes) + 127) // 128
    values = torch.zeros(rows * 128, dtype=torch.uint8)
    values[: len(codes)] = codes
    cache = KVCache.allocate(rows, 1, 128, dtype, "cpu")
    cache.v.view(torch.uint8).copy_(values.view(rows, 1, 128))
    q = torch.randn(rows, 1, 128).bfloat16()
    slots, lens = torch.arange(rows)[:, None].contiguous(), torch.ones(rows, dtype=torch.long)
    out = kernel_ops().decode_attention(q, cache.k, cache.v, slots, lens, 0.1, cache.k_scale, cache.v_scale)
    exact = cache.v.float()  # torch's own conversion; every value fits a bf16
    assert torch.equal(out.float(), exact)


@needs_kernels
def test_an_8_bit_cache_needs_its_scales():
    q, k_cache, v_cache, slots, lens = random_case(1, 4, 2, 32, 8, seed=3)
    cache = KVCache.allocate(k_cache.shape[0], 2, 32, torch.int8, "cpu")
    with pytest.raises(RuntimeError, match="needs k_scale and v_scale"):
        kernel_ops().decode_attention(q, cache.k, cache.v, slots, lens, 0.1)


@needs_kernels
def test_bad_lengths_are_refused():
    q, k_cache, v_cache, slots, lens = random_case(2, 4, 2, 32, 8, seed=3)
    with pytest.raises(RuntimeError, match="every length"):
        kernel_ops().decode_attention(q, k_cache, v_cache, slots, lens + 100, 0.1)


@needs_kernels
@pytest.mark.parametrize("context,rows", [(1, 5), (15, 2), (37, 5), (250, 9), (300, 9)])
def test_a_verification_run_reads_the_context_once_and_matches_each_row_alone(context, rows):
    """The k + 1 rows of a verification (one sequence, lengths one apart, one slot table) next to
    other sequences: each row's output is bit for bit that of the row computed on its own, and
    near the float64 reference."""
    q, k_cache, v_cache, slots, lens = random_case(rows + 2, 32, 8, 128, context + rows, seed=context)
    lens[1 : rows + 1] = torch.arange(context + 1, context + rows + 1)
    slots[1 : rows + 1] = slots[rows]  # one table, each row attending to its own prefix
    scale = 128**-0.5
    together = kernel_ops().decode_attention(q, k_cache, v_cache, slots, lens, scale)
    for b in range(rows + 2):
        one = slice(b, b + 1)
        row_slots = slots[one].contiguous()
        alone = kernel_ops().decode_attention(q[one], k_cache, v_cache, row_slots, lens[one], scale)
        assert torch.equal(together[b], alone[0])
    expected = reference(q, k_cache, v_cache, slots, lens, scale)
    assert (together.double() - expected).abs().max() < 1e-2 * expected.abs().max()
