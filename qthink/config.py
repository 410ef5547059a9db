"""ModelConfig from a checkpoint's config.json, and EngineConfig: the engine's memory and batch knobs."""

import json
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_ARCHITECTURES = {"Qwen3ForCausalLM": "qwen3", "Qwen2ForCausalLM": "qwen2"}
DTYPES = ("auto", "bfloat16", "float16", "float32")
KV_CACHE_DTYPES = ("auto", "int8", "fp8", "bfloat16", "float16", "float32")


class ConfigError(ValueError):
    """A checkpoint or engine setting qthink cannot use; the message says which and why."""


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: "RopeParameters"
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v projections carry a bias (Qwen2)
    qk_norm: bool  # per-head RMSNorm on q and k before RoPE (Qwen3)
    torch_dtype: str
    eos_token_ids: tuple[int, ...] = ()
    generation_defaults: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, raw: dict, generation: dict | None = None) -> "ModelConfig":
        archs = raw.get("architectures") or [raw.get("model_type", "?")]
        arch = archs[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"unsupported architecture {arch!r}; qthink runs "
                f"{', '.join(SUPPORTED_ARCHITECTURES)} checkpoints"
            )
        qwen3 = SUPPORTED_ARCHITECTURES[arch] == "qwen3"
        refuse_unsupported_math(raw, qwen3)
        heads = raw["num_attention_heads"]
        generation = generation or {}
        return cls(
            architecture=arch,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope=RopeParameters.from_config(raw),
            max_position_embeddings=raw.get("max_position_embeddings", 32768),
            tie_word_embeddings=raw.get("tie_word_embeddings", False),
            attention_bias=not qwen3,
            qk_norm=qwen3,
            torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "bfloat16"),
            eos_token_ids=_eos_ids(raw, generation),
            generation_defaults=_sampling_defaults(generation),
        )

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> "ModelConfig":
        model_dir = Path(model_dir)
        path = model_dir / "config.json"
        if not path.is_file():
            raise ConfigError(f"{model_dir} has no config.json: not a Hugging Face model folder")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        gen_path = model_dir / "generation_config.json"
        generation = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
        return cls.from_dict(raw, generation)

    @property
    def rope_theta(self) -> float:
        return self.rope.theta

    @property
    def max_context(self) -> int:
        """The longest context the model supports: YaRN stretches the pretrained one by its factor."""
        if self.rope.type == "yarn":
            return int(self.rope.original_max_position_embeddings * self.rope.factor)
        return self.max_position_embeddings

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )


ROPE_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "yarn": {
        "factor",
        "original_max_position_embeddings",
        "attention_factor",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "truncate",
    },
}


@dataclass(frozen=True)
class RopeParameters:
    """Rotary embedding settings as transformers reads them: `rope_parameters` (transformers 5)
    or top-level `rope_theta` plus `rope_scaling` (transformers 4)."""

    theta: float = 10000.0
    type: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    attention_factor: float | None = None  # YaRN: None means derived from factor and mscale
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True

    @classmethod
    def from_config(cls, raw: dict) -> "RopeParameters":
        params = dict(raw.get("rope_scaling") or raw.get("rope_parameters") or {})
        if any(isinstance(v, dict) for v in params.values()):
            raise ConfigError("rope_parameters per layer type is not supported: qthink needs one RoPE")
        kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
        params.pop("type", None)
        theta = params.pop("rope_theta", None) or raw.get("rope_theta") or 10000.0
        partial = params.pop("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))
        if partial not in (None, 1, 1.0):
            raise ConfigError(
                f"partial_rotary_factor={partial} is not supported (RoPE on the whole head only)"
            )
        if kind not in ROPE_KEYS:
            raise ConfigError(
                f"rope_type {kind!r} is not supported; qthink implements {', '.join(ROPE_KEYS)}"
            )
        unknown = sorted(set(params) - ROPE_KEYS[kind])
        if unknown:
            raise ConfigError(
                f"rope_parameters field {unknown[0]!r} is not supported with rope_type {kind!r}"
            )
        return cls._typed(kind, float(theta), params, raw)

    @classmethod
    def _typed(cls, kind: str, theta: float, params: dict, raw: dict) -> "RopeParameters":
        if kind == "default":
            return cls(theta=theta)
        if kind == "linear":
            return cls(theta=theta, type=kind, factor=float(params["factor"]))
        original = params.get("original_max_position_embeddings") or raw.get("max_position_embeddings", 32768)
        factor = params.get("factor") or raw.get("max_position_embeddings", original) / original
        return cls(
            theta=theta,
            type=kind,
            factor=float(factor),
            original_max_position_embeddings=int(original),
            attention_factor=params.get("attention_factor"),
            beta_fast=float(params.get("beta_fast") or 32),
            beta_slow=float(params.get("beta_slow") or 1),
            mscale=params.get("mscale"),
            mscale_all_dim=params.get("mscale_all_dim"),
            truncate=bool(params.get("truncate", True)),
        )


def refuse_unsupported_math(raw: dict, qwen3: bool) -> None:
    """Fields that change the model's output and that qthink does not implement: refused by name."""
    if raw.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act {raw['hidden_act']!r} is not supported (qthink implements silu)")
    if qwen3 and raw.get("attention_bias"):
        raise ConfigError("attention_bias=true (biases on q/k/v/o projections) is not supported for Qwen3")
    if raw.get("quantization_config"):
        method = raw["quantization_config"].get("quant_method", "?")
        raise ConfigError(
            f"quantization_config ({method}) is not supported: load the unquantized checkpoint and "
            "pass --quantization int8 or int4"
        )
    layer_types = raw.get("layer_types") or []
    other = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
    if other:
        raise ConfigError(f"layer_types {other[0]!r} is not supported")
    if raw.get("use_sliding_window") and raw.get("sliding_window") is not None:
        layers = raw.get("num_hidden_layers", 0)
        sliding = "sliding_attention" in layer_types or (
            not layer_types and raw.get("max_window_layers", layers) < layers
        )
        if sliding:
            raise ConfigError(
                f"use_sliding_window=true (sliding_window={raw['sliding_window']}) is not supported: "
                "qthink attends over the whole context"
            )


def _eos_ids(raw: dict, generation: dict) -> tuple[int, ...]:
    ids = []
    for value in (generation.get("eos_token_id"), raw.get("eos_token_id")):
        for i in value if isinstance(value, list) else [value]:
            if i is not None and i not in ids:
                ids.append(i)
    return tuple(ids)


def _sampling_defaults(generation: dict) -> dict:
    keys = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "do_sample")
    return {k: generation[k] for k in keys if k in generation}


@dataclass
class EngineConfig:
    """Knobs of the serving engine; memory is a byte budget, not a sequence count."""

    max_model_len: int | None = None  # None: the model's max_position_embeddings
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    kv_cache_memory: int | None = None  # bytes for the KV cache; None: kv_cache_fraction
    kv_cache_fraction: float = 0.3  # of the memory free after loading the weights
    block_size: int = 16
    kv_cache_dtype: str = "auto"
    enable_prefix_caching: bool = True
    seed: int = 0

    def validate(self, model: ModelConfig) -> None:
        limit = model.max_position_embeddings
        if self.max_model_len is None:
            self.max_model_len = limit
        if not 0 < self.max_model_len <= limit:
            raise ConfigError(f"max_model_len must be in 1..{limit} for this model")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ConfigError("max_num_seqs and max_num_batched_tokens must be >= 1")
        if self.block_size < 1:
            raise ConfigError("block_size must be >= 1")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ConfigError(
                f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}"
            )
