"""8-bit KV caches (int8, fp8): half the memory, next-token distributions close to the full cache."""

import pytest
import torch

from qthink import LLM, SamplingParams
from qthink.config import ConfigError


@pytest.fixture(scope="module")
def model(make_checkpoint):
    return make_checkpoint(seed=11, tie_word_embeddings=False)


def run(model, kv_dtype):
    llm = LLM(
        model=str(model), dtype="float32", max_model_len=256, kv_cache_memory=4 << 20, kv_cache_dtype=kv_dtype
    )
    prompts = [{"prompt_token_ids": list(range(2000 + 50 * i, 2030 + 50 * i))} for i in range(4)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=5)
    return llm, [o.outputs[0] for o in llm.generate(prompts, params)]


# fp8 e4m3 keeps 3 mantissa bits, int8 about 7: fp8 drifts sooner. Greedy runs diverge for good
# after the first differing token, so agreement over whole runs understates per-step agreement.
@pytest.mark.parametrize("kv_dtype, min_agree, lp_tol", [("int8", 0.9, 0.05), ("fp8", 0.7, 0.25)])
def test_8bit_cache_stays_close(model, kv_dtype, min_agree, lp_tol):
    full_llm, full = run(model, "auto")
    small_llm, small = run(model, kv_dtype)
    assert small_llm.engine.runner.caches[0].k.element_size() == 1
    assert small_llm.engine.blocks.num_blocks > 3 * full_llm.engine.blocks.num_blocks  # fp32 -> 8 bit
    agree = sum(a == b for f, s in zip(full, small) for a, b in zip(f.token_ids, s.token_ids))
    assert agree / sum(len(f.token_ids) for f in full) >= min_agree
    first = [
        (f.logprobs[0][f.token_ids[0]].logprob, s.logprobs[0][f.token_ids[0]].logprob)
        for f, s in zip(full, small)
        if f.token_ids[0] in s.logprobs[0]
    ]
    assert first and max(abs(a - b) for a, b in first) < lp_tol


def test_unknown_kv_dtype(model):
    with pytest.raises(ConfigError, match="kv_cache_dtype must be one of"):
        LLM(model=str(model), kv_cache_dtype="int3", max_model_len=64)


def test_quantized_write_read_roundtrip():
    from qthink.model.attention import KVCache

    x = torch.randn(10, 2, 32)
    for dtype, tol in ((torch.int8, 0.02), (torch.float8_e4m3fn, 0.07)):
        cache = KVCache.allocate(16, 2, 32, dtype, "cpu")
        cache.write(torch.arange(10), x, -x)
        k, v = cache.read(torch.arange(10), torch.float32)
        assert (k - x).abs().max() / x.abs().max() < tol and torch.allclose(v, -k)
