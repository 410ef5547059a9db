"""Tensor parallelism on CPU with gloo: two ranks give the greedy output of one, each holding half."""

import logging
import re

import pytest

from qthink import LLM, SamplingParams
from qthink.engine.engine import LLMEngine


@pytest.fixture(scope="module")
def tp_model(make_checkpoint):
    return make_checkpoint(seed=4, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)


def test_two_ranks_match_one(tp_model, caplog):
    prompts = [{"prompt_token_ids": [151644, 872, 198] + list(range(3000, 3000 + n))} for n in (5, 40, 17)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    kw = dict(dtype="float32", max_model_len=256, kv_cache_memory=2 << 20)
    one = [o.outputs[0].token_ids for o in LLM(model=str(tp_model), **kw).generate(prompts, params)]
    with caplog.at_level(logging.INFO, logger="qthink"):
        tp = LLM(model=str(tp_model), tensor_parallel_size=2, **kw)
    try:
        two = [o.outputs[0].token_ids for o in tp.generate(prompts, params)]
    finally:
        tp.engine.close()
    assert two == one
    ranks = re.findall(r"rank (\d): ([\d.]+) MiB of weights, (\d+) threads", caplog.text)
    assert [int(r) for r, _, _ in ranks] == [0, 1], caplog.text
    held = [float(mib) for _, mib, _ in ranks]
    assert all(abs(h / sum(held) - 0.5) < 0.02 for h in held)
    threads = {int(t) for _, _, t in ranks}
    assert threads == {tp.engine.config.num_threads}  # no rank starves the others


def test_indivisible_heads_are_refused(make_checkpoint):
    path = make_checkpoint(num_attention_heads=6, num_key_value_heads=3, hidden_size=96, head_dim=16)
    with pytest.raises(ValueError, match="tensor_parallel_size=2 does not divide num_key_value_heads=3"):
        LLMEngine(str(path), tensor_parallel_size=2, max_model_len=64)


def test_apply_tp_splits_the_model_from_outside(tiny_model_dir):
    """The layers take no parallel argument; apply_tp gives a rank its share and names the splits."""
    import inspect

    import torch

    from qthink.config import ModelConfig
    from qthink.model.attention import Attention
    from qthink.model.layers import MLP
    from qthink.model.parallel import TensorParallel, apply_tp
    from qthink.model.qwen3 import Qwen3ForCausalLM

    for layer in (Attention, MLP, Qwen3ForCausalLM):
        assert "tp" not in inspect.signature(layer).parameters
    cfg = ModelConfig.from_pretrained(tiny_model_dir)  # 4 heads, 2 KV heads, head_dim 32, tied
    with torch.device("meta"):
        model = Qwen3ForCausalLM(cfg)
        apply_tp(model, TensorParallel(rank=1, size=2))
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert (attn.heads, attn.kv_heads) == (2, 1)
    assert attn.q_proj.weight.shape == (64, 64) and attn.o_proj.weight.shape == (64, 64)
    assert mlp.down_proj.weight.shape == (64, 64) and mlp.up_proj.weight.shape == (64, 64)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert (
        model.model.embed_tokens.weight.shape == (151936 // 2, 64) and model.model.embed_tokens.start == 75968
    )
    dims = model.tp_split_dims
    assert (
        dims["model.layers.1.self_attn.k_proj.weight"] == 0
        and dims["model.layers.1.mlp.down_proj.weight"] == 1
    )
    assert (
        "model.layers.0.input_layernorm.weight" not in dims
        and "model.layers.0.self_attn.q_norm.weight" not in dims
    )
