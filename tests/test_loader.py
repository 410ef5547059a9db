"""Loading checkpoints: sharded files, dtypes, and one-line errors for every bad input."""

import json
import shutil

import pytest
import torch

from qthink.config import ConfigError, ModelConfig
from qthink.loader import LoadError, load_model, resolve_model


def test_sharded_equals_single_file(make_checkpoint):
    single = load_model(make_checkpoint(seed=3), "float32")
    sharded_dir = make_checkpoint(seed=3, shards=3)
    assert (sharded_dir / "model.safetensors.index.json").is_file()
    sharded = load_model(sharded_dir, "float32")
    for (name, a), (_, b) in zip(single.state_dict().items(), sharded.state_dict().items()):
        assert torch.equal(a, b), name


def test_dtypes(tiny_model_dir):
    assert next(load_model(tiny_model_dir, "bfloat16").parameters()).dtype == torch.bfloat16
    assert next(load_model(tiny_model_dir, "auto").parameters()).dtype == torch.float32
    with pytest.raises(ConfigError, match="unknown dtype 'float8'"):
        load_model(tiny_model_dir, "float8")


def test_tied_embeddings_share_storage(tiny_model_dir):
    model = load_model(tiny_model_dir, "float32")
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_generation_config_defaults(tiny_model_dir):
    cfg = ModelConfig.from_pretrained(tiny_model_dir)
    assert cfg.generation_defaults["temperature"] == 0.6
    assert cfg.generation_defaults["top_p"] == 0.95
    assert cfg.generation_defaults["top_k"] == 20
    assert cfg.eos_token_ids[:2] == (151645, 151643)


def test_bad_path():
    with pytest.raises(LoadError, match="not a model folder"):
        resolve_model("/no/such/folder")


def test_hub_id_offline_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(LoadError, match="huggingface-cli download Qwen/Qwen3-4B-Thinking-2507"):
        resolve_model("Qwen/Qwen3-4B-Thinking-2507")


def test_non_qwen_config(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg = json.loads((tmp_path / "m/config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (tmp_path / "m/config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="unsupported architecture 'LlamaForCausalLM'.*Qwen3ForCausalLM"):
        load_model(tmp_path / "m")


def test_truncated_safetensors(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    weights = tmp_path / "m/model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(LoadError, match="model.safetensors: unreadable .* truncated or corrupt"):
        load_model(tmp_path / "m")


def test_missing_and_misshaped_tensors(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_model_dir, tmp_path / "m")
    path = tmp_path / "m/model.safetensors"
    state = load_file(path)
    state["model.norm.weight"] = torch.ones(7)
    save_file(state, path)
    with pytest.raises(LoadError, match=r"model.norm.weight has shape \(7,\)"):
        load_model(tmp_path / "m")
    del state["model.norm.weight"]
    save_file(state, path)
    with pytest.raises(LoadError, match="tensor model.norm.weight is missing"):
        load_model(tmp_path / "m")
