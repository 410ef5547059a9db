"""Memory arithmetic: bytes of weights and of the KV cache for a model, a context and a format."""

from dataclasses import dataclass

import torch

from qthink.config import KV_CACHE_BYTES, ConfigError, EngineConfig, ModelConfig

WEIGHT_BYTES = {"bfloat16": 2.0, "float16": 2.0, "float32": 4.0, "int8": 1.0, "int4": 0.5}
KV_BYTES = KV_CACHE_BYTES


def parameter_counts(cfg: ModelConfig) -> tuple[int, int, int]:
    """(parameters in the decoder layers' linear weights, in the output layer, all others)."""
    h, q, kv = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * cfg.intermediate_size
    linear = per_layer * cfg.num_hidden_layers
    norms = cfg.num_hidden_layers * (2 * h + 2 * cfg.head_dim) + h
    return linear, cfg.vocab_size * h, cfg.vocab_size * h + norms


def weight_bytes(
    cfg: ModelConfig, dtype: str = "bfloat16", quantization: str | None = None, group_size: int = 128
) -> int:
    """Quantization applies to the decoder's linear layers, and makes the output layer int8 (its
    own copy when the embeddings are tied); the embeddings stay in `dtype`."""
    linear, head, other = parameter_counts(cfg)
    row_scale = 2 / cfg.hidden_size  # a bf16 scale per output row
    per_linear = WEIGHT_BYTES[quantization or dtype]
    if quantization == "int4":
        per_linear += 4 / group_size  # a bf16 scale and zero per group
    elif quantization == "int8":
        per_linear += row_scale
    if quantization:
        head_bytes = head * (WEIGHT_BYTES["int8"] + row_scale)
    else:
        head_bytes = 0 if cfg.tie_word_embeddings else head * WEIGHT_BYTES[dtype]
    return int(linear * per_linear + head_bytes + other * WEIGHT_BYTES[dtype])


def kv_bytes_per_token(cfg: ModelConfig, kv_dtype: str = "bfloat16") -> int:
    values = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim
    scales = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * 2 if KV_BYTES[kv_dtype] == 1 else 0
    return values * KV_BYTES[kv_dtype] + scales


def available_memory(device: torch.device) -> int:
    """Bytes free for new allocations: the GPU's free memory, or MemAvailable on a CPU host."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024 if "MemAvailable" in info else 4 << 30


@dataclass(frozen=True)
class KVPlan:
    """How many KV blocks to allocate, the context they allow, and the budget they came from."""

    num_blocks: int
    max_model_len: int
    budget: int  # bytes for the KV cache on each rank
    source: str  # which setting gave the budget, for messages


def plan_kv_cache(
    model: ModelConfig,
    config: EngineConfig,
    dtype: str,
    free_bytes: int,
    context_is_default: bool,
    draft: ModelConfig | None = None,
) -> KVPlan:
    """Blocks for `config` on a device with `free_bytes` free before loading. The budget is
    kv_cache_memory, or gpu_memory_utilization of the free memory less this rank's weights,
    or 30% of what the weights leave. A context the user left open shrinks to fit; one they
    set is an error when it does not fit. A speculative draft model (unquantized, in `dtype`)
    adds its weights, and its own cache of as many blocks as the target's to each block."""
    size = config.tensor_parallel_size
    weights = weight_bytes(model, dtype, config.quantization, config.quantization_group_size) // size
    if draft is not None:
        weights += weight_bytes(draft, dtype)
    if config.kv_cache_memory is not None:
        budget, source = config.kv_cache_memory, f"kv_cache_memory={config.kv_cache_memory}"
    elif config.gpu_memory_utilization is not None:
        util = config.gpu_memory_utilization
        budget = int(free_bytes * util) - weights
        source = (
            f"gpu_memory_utilization={util} of {free_bytes / 2**30:.1f} GiB free, "
            f"less {weights / 2**30:.2f} GiB of weights"
        )
    else:
        budget = int((free_bytes - weights) * config.KV_FRACTION_DEFAULT)
        source = f"30% of the {max(free_bytes - weights, 0) / 2**30:.1f} GiB free after the weights"
    kv_name = dtype if config.kv_cache_dtype == "auto" else config.kv_cache_dtype
    bs = config.block_size
    per_block = kv_bytes_per_token(model, kv_name) * bs // size
    if draft is not None:
        per_block += kv_bytes_per_token(draft, kv_name) * bs
    length = config.max_model_len or model.max_context  # set by config.validate
    blocks_per_seq = -(-length // bs)
    num_blocks = min(max(budget, 0) // per_block, blocks_per_seq * config.max_num_seqs)
    if num_blocks >= blocks_per_seq:
        return KVPlan(num_blocks, length, budget, source)
    if not context_is_default or num_blocks < 1:
        raise ConfigError(
            f"the KV cache budget ({max(budget, 0) / 2**20:.1f} MiB: {source}) holds {num_blocks * bs} "
            f"tokens, fewer than max_model_len={length}; raise the memory setting "
            "or lower max_model_len"
        )
    return KVPlan(num_blocks, num_blocks * bs, budget, source)
