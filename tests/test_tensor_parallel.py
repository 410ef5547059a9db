"""Tensor parallelism on CPU with gloo: two ranks give the greedy output of one, each holding half."""

import pytest

from qthink import LLM, SamplingParams
from qthink.engine.engine import LLMEngine


@pytest.fixture(scope="module")
def tp_model(make_checkpoint):
    return make_checkpoint(seed=4, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)


def test_two_ranks_match_one(tp_model):
    prompts = [{"prompt_token_ids": [151644, 872, 198] + list(range(3000, 3000 + n))} for n in (5, 40, 17)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    kw = dict(dtype="float32", max_model_len=256, kv_cache_memory=2 << 20)
    one = [o.outputs[0].token_ids for o in LLM(model=str(tp_model), **kw).generate(prompts, params)]
    tp = LLM(model=str(tp_model), tensor_parallel_size=2, **kw)
    try:
        two = [o.outputs[0].token_ids for o in tp.generate(prompts, params)]
        held = tp.engine.rank_weight_bytes
    finally:
        tp.engine.close()
    assert two == one
    total = sum(held)
    assert len(held) == 2 and all(abs(h / total - 0.5) < 0.02 for h in held)


def test_indivisible_heads_are_refused(make_checkpoint):
    path = make_checkpoint(num_attention_heads=6, num_key_value_heads=3, hidden_size=96, head_dim=16)
    with pytest.raises(ValueError, match="tensor_parallel_size=2 does not divide num_key_value_heads=3"):
        LLMEngine(str(path), tensor_parallel_size=2, max_model_len=64)
