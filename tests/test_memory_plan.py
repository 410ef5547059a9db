"""The KV cache plan: which setting gives the budget, and what max_model_len becomes, before loading."""

import json
from pathlib import Path

import pytest

from qthink.config import ConfigError, EngineConfig, ModelConfig
from qthink.memory import kv_bytes_per_token, plan_kv_cache, weight_bytes

GiB = 2**30
MODEL = ModelConfig.from_dict(
    json.loads((Path(__file__).parent.parent / "qthink/known_models/Qwen3-0.6B.json").read_text())
)
PER_TOKEN = kv_bytes_per_token(MODEL, "bfloat16")  # 114,688 bytes
WEIGHTS = weight_bytes(MODEL, "bfloat16")


def config(**kw) -> EngineConfig:
    c = EngineConfig(**kw)
    c.validate(MODEL)
    return c


def test_gpu_memory_utilization_is_a_share_of_free_memory_for_weights_and_kv():
    free = 8 * GiB
    plan = plan_kv_cache(
        MODEL, config(gpu_memory_utilization=0.5, max_model_len=4096, max_num_seqs=2), "bfloat16", free, False
    )
    assert plan.budget == int(free * 0.5) - WEIGHTS
    assert "gpu_memory_utilization=0.5" in plan.source
    assert plan.num_blocks == 4096 // 16 * 2  # every sequence at full length fits: no more is taken


def test_kv_cache_memory_overrides_and_default_is_30_percent_of_what_weights_leave():
    c = config(kv_cache_memory=64 << 20, gpu_memory_utilization=0.9, max_model_len=256)
    assert plan_kv_cache(MODEL, c, "bfloat16", 8 * GiB, False).budget == 64 << 20
    default = plan_kv_cache(MODEL, config(max_model_len=256), "bfloat16", 8 * GiB, False)
    assert default.budget == int((8 * GiB - WEIGHTS) * 0.3)


def test_an_open_context_shrinks_to_fit_and_a_set_one_is_refused():
    c = config(kv_cache_memory=PER_TOKEN * 1000)
    plan = plan_kv_cache(MODEL, c, "bfloat16", 8 * GiB, context_is_default=True)
    assert plan.max_model_len == 1000 // 16 * 16 and plan.num_blocks == 1000 // 16
    with pytest.raises(
        ConfigError, match=r"kv_cache_memory=114688000\) holds 992 tokens, fewer than max_model_len=4096"
    ):
        plan_kv_cache(
            MODEL, config(kv_cache_memory=PER_TOKEN * 1000, max_model_len=4096), "bfloat16", 0, False
        )
    with pytest.raises(ConfigError, match="gpu_memory_utilization=0.1"):
        plan_kv_cache(MODEL, config(gpu_memory_utilization=0.1), "bfloat16", WEIGHTS, True)


def test_tensor_parallel_ranks_each_plan_their_share():
    one = plan_kv_cache(MODEL, config(gpu_memory_utilization=0.5), "bfloat16", 4 * GiB, True)
    two = plan_kv_cache(
        MODEL, config(gpu_memory_utilization=0.5, tensor_parallel_size=2), "bfloat16", 4 * GiB, True
    )
    assert two.budget == int(4 * GiB * 0.5) - WEIGHTS // 2 and two.num_blocks > one.num_blocks


def test_bench_sizes_its_engine_from_the_flags_before_it_starts():
    import argparse

    from qthink.bench_cli import add_arguments, bench_settings
    from qthink.engine_flags import engine_config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--batch", "1", "8", "--prompt-len", "300", "--max-num-seqs", "2"])
    config = engine_config_from_args(args, **bench_settings(args))
    assert (config.max_num_seqs, config.max_num_batched_tokens, config.max_model_len) == (8, 2400, 380)
    args = parser.parse_args(["--max-model-len", "1024", "--max-num-batched-tokens", "4096"])
    config = engine_config_from_args(args, **bench_settings(args))
    assert (config.max_model_len, config.max_num_batched_tokens, config.max_num_seqs) == (1024, 4096, 64)


def test_a_draft_model_counts_its_weights_and_its_own_cache_in_each_block():
    target = ModelConfig.from_dict(
        json.loads((Path(__file__).parent.parent / "qthink/known_models/Qwen3-4B.json").read_text())
    )
    c = config(gpu_memory_utilization=0.5, max_model_len=256, max_num_seqs=1000)
    alone = plan_kv_cache(target, c, "bfloat16", 40 * GiB, False)
    with_draft = plan_kv_cache(target, c, "bfloat16", 40 * GiB, False, draft=MODEL)
    assert with_draft.budget == alone.budget - WEIGHTS
    per_block = (kv_bytes_per_token(target, "bfloat16") + PER_TOKEN) * 16
    assert with_draft.num_blocks == with_draft.budget // per_block < alone.num_blocks
