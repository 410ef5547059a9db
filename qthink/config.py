"""ModelConfig from a checkpoint's config.json, and EngineConfig: the engine's memory and batch knobs."""

import difflib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from qthink.parsing.thinking import REASONING_PARSERS

SUPPORTED_ARCHITECTURES = {"Qwen3ForCausalLM": "qwen3", "Qwen2ForCausalLM": "qwen2"}
DTYPES = ("auto", "bfloat16", "float16", "float32")
DTYPE_ALIASES = {"half": "float16", "float": "float32"}  # vLLM's spellings
QUANTIZATIONS = (None, "int8", "int4")
KV_CACHE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "int8": 1, "fp8": 1}  # per value
KV_CACHE_DTYPES = ("auto", *KV_CACHE_BYTES)
KV_DTYPE_ALIASES = {"fp8_e4m3": "fp8"}


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
    def from_pretrained(
        cls,
        model_dir: str | Path,
        generation_config: str = "auto",
        override: dict | None = None,
        hf_overrides: dict | None = None,
    ) -> "ModelConfig":
        """config.json of `model_dir` under `hf_overrides`; sampling defaults from
        `generation_config` (auto: the model's generation_config.json, vllm: none, or a folder
        holding one) under `override`."""
        model_dir = Path(model_dir)
        raw = _read_json(
            model_dir / "config.json", f"{model_dir} has no config.json: not a Hugging Face model folder"
        )
        raw = apply_overrides(raw, hf_overrides)
        generation = _read_json(model_dir / "generation_config.json")
        config = cls.from_dict(raw, generation)
        defaults = _generation_defaults(config.generation_defaults, generation_config, override)
        return replace(config, generation_defaults=defaults)

    @property
    def rope_theta(self) -> float:
        return self.rope.theta

    @property
    def max_context(self) -> int:
        """The longest context the model supports: YaRN stretches the pretrained one by its factor
        (as vLLM derives it), unless config.json already names a longer one."""
        original = self.rope.original_max_position_embeddings
        if self.rope.type == "yarn" and original is not None:
            stretched = int(original * self.rope.factor)
            return max(stretched, self.max_position_embeddings)
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
        theta = (
            params.pop("rope_theta", None)
            or raw.get("rope_theta")
            or (raw.get("rope_parameters") or {}).get("rope_theta")
            or 10000.0
        )
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


def apply_overrides(raw: dict, overrides: dict | None) -> dict:
    """config.json with `overrides` (vLLM's --hf-overrides) on top. A `rope_scaling` override of a
    transformers 5 config replaces its `rope_parameters` and keeps the theta they held."""
    raw = dict(raw)
    for key, value in (overrides or {}).items():
        if key == "rope_scaling" and isinstance(raw.get("rope_parameters"), dict) and isinstance(value, dict):
            value = {"rope_theta": raw["rope_parameters"].get("rope_theta"), **value}
            key = "rope_parameters"
            raw.pop("rope_scaling", None)
        raw[key] = value
    return raw


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


# The generation_config.json keys that become sampling defaults (what SamplingParams.with_defaults applies).
SAMPLING_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "do_sample")


def _sampling_defaults(generation: dict) -> dict:
    return {k: generation[k] for k in SAMPLING_DEFAULT_KEYS if k in generation}


def _read_json(path: Path, missing: str | None = None) -> dict:
    """The JSON object in `path`; {} when absent, unless `missing` says why that is an error."""
    if not path.is_file():
        if missing:
            raise ConfigError(missing)
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None


def _generation_defaults(model_defaults: dict, source: str, override: dict | None) -> dict:
    if source == "auto":
        defaults = model_defaults
    elif source == "vllm":
        defaults = {}
    else:
        folder = Path(source).expanduser()
        missing = f"generation_config {source!r}: expected auto, vllm or a folder with generation_config.json"
        defaults = _sampling_defaults(_read_json(folder / "generation_config.json", missing))
    unknown = sorted(set(override or {}) - set(SAMPLING_DEFAULT_KEYS))
    if unknown:
        raise ConfigError(
            f"override_generation_config key {unknown[0]!r} is not supported; "
            f"qthink takes {', '.join(SAMPLING_DEFAULT_KEYS)} as defaults"
        )
    return {**defaults, **(override or {})}


def knob(default, help: str, group: str, choices: tuple | None = None, flag: bool = True):
    """An EngineConfig field with what its command-line flag needs: help, group, choices."""
    meta = {"help": help, "group": group, "choices": choices, "flag": flag}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class SpeculativeConfig:
    """vLLM's `speculative_config`: n-gram (prompt lookup) drafting, suffix drafting (n-gram
    lookup over the sequence, then over recently finished requests), or a small draft model with
    the target's tokenizer (`{"model": path}`), plus when speculation switches itself off."""

    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 1
    model: str | None = None  # draft_model: a checkpoint with the target's vocabulary
    # A sequence stops speculating while its recent acceptance rate is below this, and tries
    # again after `probe_interval` steps (a thinking trace changes its character). A 4B-shape
    # verification of 4 drafts costs ~1.2-1.35x a decode step at batch 1 on a CPU
    # (benchmarks/bench_speculative.py): it pays from a per-token acceptance of ~0.15-0.25.
    min_acceptance_rate: float = 0.2
    probe_interval: int = 8
    # No sequence drafts in a step with more decoding sequences than this. Measured on the 4B
    # shape (bf16, k = 4, benchmarks/bench_speculative.py): verifying costs 1.2x a decode step
    # at batch 1, 1.5x at 2, 1.9x at 3 (an acceptance of ~0.5 to break even) and 6-9x from 4
    # on, where the k + 1 rows per sequence outgrow the native GEMV.
    disable_by_batch_size: int = 2
    # suffix: n-gram drafting over the sequence's own text, then over this many recently
    # finished requests' texts (vLLM's name for the limit)
    suffix_decoding_max_cached_requests: int = 256

    METHODS = ("ngram", "suffix", "draft_model")

    @classmethod
    def from_dict(cls, raw: dict) -> "SpeculativeConfig":
        """A `model` without a method means draft_model, as in vLLM."""
        if not isinstance(raw, dict):
            raise ConfigError(f"speculative_config must be a JSON object, got {raw!r}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"speculative_config field {unknown[0]!r} is not supported; "
                f"qthink knows {', '.join(sorted(known))}"
            )
        raw = dict(raw)
        if raw.get("model") is not None:
            raw.setdefault("method", "draft_model")
        spec = cls(**raw)
        if spec.method not in cls.METHODS:
            raise ConfigError(
                f"speculative_config method {spec.method!r} is not supported; use {' or '.join(cls.METHODS)}"
            )
        if (spec.model is not None) != (spec.method == "draft_model"):
            raise ConfigError("speculative_config model is needed by, and only by, method draft_model")
        names = ("num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min", "probe_interval")
        for name in (*names, "disable_by_batch_size", "suffix_decoding_max_cached_requests"):
            value = getattr(spec, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"speculative_config {name} must be an integer >= 1, got {value!r}")
        if spec.prompt_lookup_min > spec.prompt_lookup_max:
            raise ConfigError("speculative_config prompt_lookup_min must be <= prompt_lookup_max")
        if not isinstance(spec.min_acceptance_rate, (int, float)) or not 0 <= spec.min_acceptance_rate <= 1:
            raise ConfigError(
                f"speculative_config min_acceptance_rate must be in [0, 1], got {spec.min_acceptance_rate!r}"
            )
        return spec


@dataclass
class EngineConfig:
    """Every setting of the engine, in one place: the command-line flags are generated from these
    fields (their help, group and choices), and `finalize` fixes them against the model before
    any weight is loaded or any tensor-parallel rank starts."""

    dtype: str = knob(
        "auto",
        "weights and activations; auto: the checkpoint's dtype",
        "model",
        DTYPES + tuple(DTYPE_ALIASES),
    )
    quantization: str | None = knob(
        None, "weight-only quantization of the decoder's linear layers", "model", QUANTIZATIONS
    )
    quantization_group_size: int = knob(128, "int4: inputs per scale (a multiple of 64)", "model")
    kv_cache_dtype: str = knob(
        "auto",
        "KV cache format; int8/fp8 halve a bf16 cache (per-token, per-head scales)",
        "memory",
        KV_CACHE_DTYPES + tuple(KV_DTYPE_ALIASES),
    )
    device: str | None = knob(None, "cpu, cuda, cuda:1 ... (default: cuda when available)", "model")
    tensor_parallel_size: int = knob(
        1, "ranks the model is split over (processes, one device each)", "parallel"
    )
    num_threads: int | None = knob(
        None, "CPU threads of each rank (default: the cores, shared among the ranks)", "parallel"
    )
    max_model_len: int | None = knob(
        None, "context length, prompt plus output (default: the model's, shortened to fit memory)", "memory"
    )
    max_num_seqs: int = knob(64, "sequences run together in one step", "scheduler")
    max_num_batched_tokens: int = knob(
        2048, "tokens per step (long prompts are prefilled in chunks)", "scheduler"
    )
    gpu_memory_utilization: float | None = knob(
        None,
        "fraction of the device's free memory (GPU or CPU RAM) for weights plus KV cache "
        "(default: the weights plus 30%% of what is left)",
        "memory",
    )
    kv_cache_memory: int | None = knob(
        None, "bytes for the KV cache (overrides --gpu-memory-utilization)", "memory"
    )
    block_size: int = knob(16, "tokens per KV cache block", "memory")
    enable_prefix_caching: bool = knob(True, "reuse the KV blocks of prompts' shared prefixes", "scheduler")
    seed: int = knob(0, "seed of the sampler for requests without their own seed", "scheduler")
    speculative_config: dict | None = knob(
        None,
        'speculative decoding, JSON: {"method": "ngram", "num_speculative_tokens": 4} '
        'or {"model": DRAFT_CHECKPOINT, "num_speculative_tokens": 4}',
        "scheduler",
    )
    grammar_compile_timeout: float = knob(
        10.0,
        "seconds a structured-output grammar may take to compile (off the engine thread) before its "
        "request is refused with a 400",
        "scheduler",
    )
    loop_guard: bool | dict | None = knob(
        None,
        "requests' default: end thinking that repeats one span (64 tokens seen 4 times) with the "
        "early-stop phrase",
        "scheduler",
    )

    reasoning_parser: str = knob(
        "qwen3",
        "how a prompt without thinking markers in its last turn is read: qwen3, output is content "
        "unless it opens <think>; deepseek_r1, output is thinking until </think> (both split at the "
        "first </think>; see docs/compatibility.md)",
        "parsing",
        REASONING_PARSERS,
    )
    literal_special_tokens: bool = knob(
        False,
        "hardening for public endpoints: <|im_start|>, <tool_call> and the like typed into a message "
        "stay text instead of becoming control tokens (the default, as transformers and vLLM do)",
        "parsing",
    )

    hf_overrides: dict | None = knob(
        None, "JSON merged over the model's config.json, as vLLM's --hf-overrides", "model"
    )
    rope_scaling: dict | None = knob(
        None,
        'RoPE scaling over config.json\'s, e.g. {"rope_type": "yarn", "factor": 4.0, '
        '"original_max_position_embeddings": 32768}',
        "model",
    )
    generation_config: str = knob(
        "auto",
        "sampling defaults: auto (the model's generation_config.json), vllm (none), or a folder holding one",
        "generation",
    )
    override_generation_config: dict | None = knob(
        None, 'JSON over those defaults, e.g. {"temperature": 0.7}', "generation"
    )

    KV_FRACTION_DEFAULT = 0.3  # without a memory setting: this share of what the weights leave free

    @classmethod
    def from_kwargs(cls, **kwargs) -> "EngineConfig":
        """EngineConfig(**kwargs), where a misspelt name is a ConfigError naming the closest one."""
        names = list(cls.__dataclass_fields__)
        for key in kwargs:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown engine setting {key!r}{hint}")
        return cls(**kwargs)

    def model_overrides(self) -> dict:
        """--hf-overrides with --rope-scaling folded in: what changes the model's config.json."""
        overrides = dict(self.hf_overrides or {})
        if self.rope_scaling is not None:
            overrides["rope_scaling"] = self.rope_scaling
        return overrides

    @property
    def speculative(self) -> SpeculativeConfig | None:
        return (
            None if self.speculative_config is None else SpeculativeConfig.from_dict(self.speculative_config)
        )

    def validate(self, model: ModelConfig) -> None:
        """Check every field against the model; fills in max_model_len when it was left open."""
        self.dtype = DTYPE_ALIASES.get(self.dtype, self.dtype)
        self.kv_cache_dtype = KV_DTYPE_ALIASES.get(self.kv_cache_dtype, self.kv_cache_dtype)
        _one_of("dtype", self.dtype, DTYPES)
        _one_of("quantization", self.quantization, QUANTIZATIONS)
        _one_of("kv_cache_dtype", self.kv_cache_dtype, KV_CACHE_DTYPES)
        _one_of("reasoning_parser", self.reasoning_parser, REASONING_PARSERS)
        limit = model.max_context
        if self.max_model_len is None:
            self.max_model_len = limit
        if not 0 < self.max_model_len <= limit:
            raise ConfigError(f"max_model_len must be in 1..{limit} for this model, got {self.max_model_len}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.quantization == "int4" and (
            self.quantization_group_size < 64 or self.quantization_group_size % 64
        ):
            raise ConfigError(
                f"quantization_group_size must be a multiple of 64, got {self.quantization_group_size}"
            )
        util = self.gpu_memory_utilization
        if util is not None and not 0 < util <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {util}")
        if not self.grammar_compile_timeout > 0:
            raise ConfigError(
                f"grammar_compile_timeout must be > 0 seconds, got {self.grammar_compile_timeout}"
            )
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"num_threads must be >= 1, got {self.num_threads}")
        self.speculative  # noqa: B018 (validates the JSON)


def _one_of(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        shown = ", ".join(str(a) for a in allowed if a is not None)
        raise ConfigError(f"{name} must be one of {shown}, got {value!r}")
