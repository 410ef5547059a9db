"""config.json in the transformers 4 and 5 formats: the published Qwen configs load, fields that
change the math are refused by name, and tiny models in both formats (YaRN too) match transformers."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from qthink.config import ConfigError, EngineConfig, ModelConfig
from qthink.loader import LoadError, load_model

KNOWN = Path(__file__).parent.parent / "qthink" / "known_models"
CORPUS = Path(__file__).parent / "data" / "configs"
OLD = sorted(KNOWN.glob("*.json")) + sorted((CORPUS / "transformers4").glob("*.json"))
NEW = sorted((CORPUS / "transformers5").glob("*.json"))

PUBLISHED = {  # name: (hidden, layers, heads, kv heads, intermediate, vocab, theta, max positions, tied)
    "Qwen3-0.6B": (1024, 28, 16, 8, 3072, 151936, 1e6, 40960, True),
    "Qwen3-1.7B": (2048, 28, 16, 8, 6144, 151936, 1e6, 40960, True),
    "Qwen3-4B": (2560, 36, 32, 8, 9728, 151936, 1e6, 40960, True),
    "Qwen3-8B": (4096, 36, 32, 8, 12288, 151936, 1e6, 40960, False),
    "Qwen3-14B": (5120, 40, 40, 8, 17408, 151936, 1e6, 40960, False),
    "Qwen3-32B": (5120, 64, 64, 8, 25600, 151936, 1e6, 40960, False),
    "Qwen3-4B-Thinking-2507": (2560, 36, 32, 8, 9728, 151936, 5e6, 262144, True),
    "Qwen3-4B-Instruct-2507": (2560, 36, 32, 8, 9728, 151936, 5e6, 262144, True),
    "Qwen2.5-7B-Instruct": (3584, 28, 28, 4, 18944, 152064, 1e6, 32768, False),
    "Qwen3-8B-YaRN": (4096, 36, 32, 8, 12288, 151936, 1e6, 131072, False),
}


def _fields(cfg: ModelConfig) -> tuple:
    return (
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.intermediate_size,
        cfg.vocab_size,
        cfg.rope_theta,
        cfg.max_position_embeddings,
        cfg.tie_word_embeddings,
    )


def test_corpus_covers_both_formats_of_every_model():
    assert {p.stem for p in OLD} == {p.stem for p in NEW} == set(PUBLISHED)
    assert all("rope_parameters" in json.loads(p.read_text()) for p in NEW)
    assert not any("rope_parameters" in json.loads(p.read_text()) for p in OLD)


@pytest.mark.parametrize("path", OLD + NEW, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_published_configs_load_with_their_values(path):
    cfg = ModelConfig.from_dict(json.loads(path.read_text()))
    assert _fields(cfg) == PUBLISHED[path.stem]
    assert cfg.head_dim == (128 if path.stem.startswith("Qwen3") else 3584 // 28)
    assert cfg.attention_bias == path.stem.startswith("Qwen2")
    assert cfg.qk_norm == path.stem.startswith("Qwen3")
    ref = AutoConfig.for_model(**json.loads(path.read_text()))
    assert cfg.rope.type == ref.rope_parameters["rope_type"]
    assert cfg.rope_theta == ref.rope_parameters["rope_theta"]


def test_yarn_context_is_the_original_times_the_factor():
    for folder in ("transformers4", "transformers5"):
        cfg = ModelConfig.from_dict(json.loads((CORPUS / folder / "Qwen3-8B-YaRN.json").read_text()))
        assert (cfg.rope.type, cfg.rope.factor, cfg.rope.original_max_position_embeddings) == (
            "yarn",
            4.0,
            32768,
        )
        assert cfg.max_context == 131072


def _published(**changes) -> dict:
    raw = json.loads((KNOWN / "Qwen3-8B.json").read_text())
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope_type 'dynamic'"),
        (dict(rope_parameters={"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e6}), "'llama3'"),
        (dict(rope_scaling={"type": "longrope", "factor": 2.0}), "'longrope'"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "mrope_section": [1]}), "'mrope_section'"),
        (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
        (dict(rope_parameters={"rope_type": "default", "partial_rotary_factor": 0.5}), "partial_rotary"),
        (dict(use_sliding_window=True, sliding_window=4096, max_window_layers=28), "use_sliding_window"),
        (dict(attention_bias=True), "attention_bias"),
        (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
        (dict(quantization_config={"quant_method": "fp8"}), r"quantization_config \(fp8\)"),
        (dict(layer_types=["chunked_attention"] * 36), "layer_types 'chunked_attention'"),
        (dict(rope_parameters={"full_attention": {"rope_type": "default"}}), "per layer type"),
    ],
)
def test_fields_that_change_the_math_are_refused_by_name(changes, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig.from_dict(_published(**changes))


def test_harmless_fields_are_accepted():
    # Sliding window named but off (Qwen2.5's configs), or on for no layer: the math is unchanged.
    ModelConfig.from_dict(_published(use_sliding_window=False, sliding_window=131072))
    ModelConfig.from_dict(_published(use_sliding_window=True, sliding_window=4096, max_window_layers=36))


# Tiny models saved by the installed transformers; the same weights under a config.json written
# in each format. YaRN's original context (16) is far below the positions tested (up to 63).
ROPES = {
    "default-5e6": dict(rope_theta=5e6),
    "yarn": dict(
        rope_theta=1e6,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    ),
    "yarn-mscale": dict(
        rope_theta=1e4,
        rope_scaling={
            "rope_type": "yarn",
            "factor": 8.0,
            "original_max_position_embeddings": 16,
            "mscale": 0.707,
            "mscale_all_dim": 1.0,
            "beta_fast": 16,
        },
    ),
    "yarn-attention-factor": dict(
        rope_theta=1e6,
        rope_scaling={
            "type": "yarn",
            "factor": 2.0,
            "original_max_position_embeddings": 24,
            "attention_factor": 1.3,
        },
    ),
    "linear": dict(rope_theta=1e4, rope_scaling={"rope_type": "linear", "factor": 2.0}),
}
ARCHS = {
    "qwen3": dict(
        model_type="qwen3", architectures=["Qwen3ForCausalLM"], head_dim=16, tie_word_embeddings=True
    ),
    "qwen2": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], tie_word_embeddings=False),
}


def _tiny_config(arch: str, rope: str) -> dict:
    raw = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_scaling=None,
    )
    raw.update(ARCHS[arch])
    raw.update(json.loads(json.dumps(ROPES[rope])))
    return raw


def _old_format(new: dict, old: dict) -> dict:
    """The transformers 5 file rewritten as transformers 4 wrote it: top-level rope_theta, rope_scaling."""
    raw = {k: v for k, v in new.items() if k not in ("rope_parameters", "layer_types", "dtype")}
    raw.update(rope_theta=old["rope_theta"], rope_scaling=old["rope_scaling"], torch_dtype="float32")
    return raw


@pytest.fixture(scope="module", params=[(a, r) for a in ARCHS for r in ROPES], ids=lambda p: "-".join(p))
def saved(request, tmp_path_factory):
    arch, rope = request.param
    old = _tiny_config(arch, rope)
    torch.manual_seed(len(arch) + len(rope))
    ref = AutoModelForCausalLM.from_config(AutoConfig.for_model(**old), dtype=torch.float32).eval()
    folder = tmp_path_factory.mktemp(f"{arch}-{rope}")
    ref.save_pretrained(folder)
    return folder, ref, old


@pytest.mark.parametrize("fmt", ["transformers5", "transformers4"])
def test_tiny_models_match_transformers_in_both_formats(saved, fmt, tmp_path):
    folder, ref, old = saved
    new = json.loads((folder / "config.json").read_text())
    assert "rope_parameters" in new and "rope_theta" not in new
    if fmt == "transformers4":
        for f in folder.iterdir():
            (tmp_path / f.name).write_bytes(f.read_bytes())
        (tmp_path / "config.json").write_text(json.dumps(_old_format(new, old)))
        folder = tmp_path
    ours = load_model(folder, "float32")
    ids = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = torch.log_softmax(ours(ids, torch.arange(64).expand(2, 64)), -1)
        b = torch.log_softmax(ref(ids).logits, -1)
    assert (a - b).abs().max().item() < 1e-4


def test_yarn_changes_the_logits_beyond_the_original_context(saved):
    """Guards the parity test: were the scaling ignored, the logits past position 16 would differ."""
    folder, ref, old = saved
    if "yarn" not in str(old.get("rope_scaling")):
        pytest.skip("not a YaRN model")
    plain = json.loads((folder / "config.json").read_text())
    plain["rope_parameters"] = {"rope_type": "default", "rope_theta": old["rope_theta"]}
    ids = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        b = ref(ids).logits
        unscaled = AutoModelForCausalLM.from_config(AutoConfig.for_model(**plain), dtype=torch.float32)
        unscaled.load_state_dict(ref.state_dict(), strict=False)
        assert (unscaled.eval()(ids).logits - b).abs().max().item() > 1e-3


def test_unannounced_tensor_is_refused(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _, _ = saved
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    state = load_file(tmp_path / "model.safetensors")
    state["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(64)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        LoadError, match="tensor model.layers.0.self_attn.o_proj.bias is not part of the model"
    ):
        load_model(tmp_path, "float32")


YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}


@pytest.mark.parametrize("folder", [KNOWN, CORPUS / "transformers5"])
def test_rope_scaling_override_keeps_the_theta_of_either_format(folder, tmp_path):
    (tmp_path / "config.json").write_text((folder / "Qwen3-4B.json").read_text())  # 40,960 positions
    for overrides in ({"rope_scaling": YARN}, {"rope_scaling": dict(YARN, rope_type=None, type="yarn")}):
        cfg = ModelConfig.from_pretrained(tmp_path, hf_overrides=overrides)
        assert (cfg.rope.type, cfg.rope_theta, cfg.max_context) == ("yarn", 1e6, 131072)
    (tmp_path / "config.json").write_text((folder / "Qwen3-4B-Thinking-2507.json").read_text())
    cfg = ModelConfig.from_pretrained(tmp_path, hf_overrides={"rope_scaling": YARN})
    assert (cfg.rope_theta, cfg.max_context) == (5e6, 262144)  # config.json names a longer context


def test_rope_scaling_override_matches_transformers(saved):
    """--rope-scaling on a checkpoint without it gives transformers' logits for the YaRN config."""
    folder, ref, old = saved
    if old.get("rope_scaling") or old["model_type"] != "qwen3":
        pytest.skip("one plain Qwen3 model is enough")
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    cfg = ModelConfig.from_pretrained(folder, hf_overrides=EngineConfig(rope_scaling=yarn).model_overrides())
    ours = load_model(folder, "float32", config=cfg)
    scaled = AutoModelForCausalLM.from_config(AutoConfig.for_model(**dict(old, rope_scaling=yarn)))
    scaled.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = torch.log_softmax(ours(ids, torch.arange(64)[None]), -1)
        b = torch.log_softmax(scaled.float().eval()(ids).logits, -1)
    assert (a - b).abs().max().item() < 1e-4
