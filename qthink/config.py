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
    rope_theta: float
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
        if raw.get("rope_scaling"):
            raise ConfigError(f"rope_scaling {raw['rope_scaling']!r} is not supported")
        qwen3 = SUPPORTED_ARCHITECTURES[arch] == "qwen3"
        heads = raw["num_attention_heads"]
        generation = generation or {}
        return cls(
            architecture=arch,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=raw.get("num_key_value_heads", heads),
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            max_position_embeddings=raw.get("max_position_embeddings", 32768),
            tie_word_embeddings=raw.get("tie_word_embeddings", False),
            attention_bias=raw.get("attention_bias", False) if qwen3 else True,
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

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
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
