"""Resolve a model (folder, Hugging Face cache, hub) and load its safetensors into the Qwen3 module."""

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from qthink.config import DTYPES, ConfigError, ModelConfig
from qthink.model.huge_pages import move_to_huge_pages
from qthink.model.layers import RotaryEmbedding
from qthink.model.parallel import SINGLE, TensorParallel, apply_tp
from qthink.model.quant import quantize_model
from qthink.model.qwen3 import Qwen3ForCausalLM

IGNORED_TENSORS = ("rotary_emb.inv_freq",)  # saved by old transformers, recomputed here
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]


class LoadError(RuntimeError):
    """The model cannot be found or its weights cannot be read; the message says what to do."""


def resolve_model(model: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a hub id looked up in the HF cache, then downloaded."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    name = str(model)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise LoadError(f"model {name!r} is not a model folder nor a Hugging Face id (org/name)")
    return _from_hub(name)


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise LoadError(_not_cached(repo_id, "HF_HUB_OFFLINE is set"))
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as e:
        raise LoadError(_not_cached(repo_id, f"download failed: {type(e).__name__}")) from None


def _not_cached(repo_id: str, why: str) -> str:
    return (
        f"model {repo_id!r} is not in the Hugging Face cache and {why}; get the weights with "
        f"`huggingface-cli download {repo_id}` on a machine online (or copy the folder) and "
        "pass its path"
    )


def resolve_dtype(dtype: str | torch.dtype, config: ModelConfig) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    name = config.torch_dtype if dtype == "auto" else dtype
    return getattr(torch, name.removeprefix("torch."), torch.bfloat16)


def weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (model_dir / s).is_file()]
        if missing:
            raise LoadError(f"{model_dir}: shard {missing[0]} named in the index is missing")
        return [model_dir / s for s in shards]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise LoadError(f"{model_dir} has no .safetensors weights")
    return files


def load_model(
    model_dir: Path,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    tp: TensorParallel = SINGLE,
    quantization: str | None = None,
    group_size: int = 128,
    config: ModelConfig | None = None,
) -> Qwen3ForCausalLM:
    """Build the module without initialising it, then fill every parameter from the files;
    under tensor parallelism a rank reads only its own slice of each tensor. `quantization`
    (int8, int4 with `group_size` inputs per scale) then replaces the decoder's linear weights;
    bf16 weights get the fast matmul. `config`: the model's, when overridden (default: config.json)."""
    config = config or ModelConfig.from_pretrained(model_dir)
    torch_dtype = resolve_dtype(dtype, config)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
        apply_tp(model, tp)
    params = dict(model.named_parameters())
    ignored = set(IGNORED_TENSORS)
    if config.tie_word_embeddings:
        params.pop("lm_head.weight", None)
        ignored.add("lm_head.weight")  # some tied checkpoints store a copy anyway
    loaded = set()
    for file in tqdm(weight_files(model_dir), desc="loading weights", unit="file"):
        for name, tensor in _read_tensors(file, params, ignored, tp, model.tp_split_dims):
            _check_shape(name, tensor, params[name])
            _assign(model, name, tensor.to(device=device, dtype=torch_dtype))
            loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing:
        raise LoadError(f"{model_dir}: tensor {missing[0]} is missing ({len(missing)} missing)")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope).to(device)
    model.eval().requires_grad_(False)
    quantize_model(model, quantization, group_size)  # int8/int4, or the fast bf16 matmul for bf16 weights
    move_to_huge_pages(model)
    return model


def _read_tensors(file: Path, wanted: dict, ignored: set[str], tp: TensorParallel, dims: dict[str, int]):
    """(name, tensor) for the wanted names in `file`; a tensor the model has no place for (a bias
    config.json does not announce, say) is an error, not silently dropped."""
    try:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if name in wanted:
                    yield name, tp.shard(f.get_slice(name), dims.get(name))
                elif not name.endswith(tuple(ignored)):
                    raise LoadError(
                        f"{file.name}: tensor {name} is not part of the model config.json describes; "
                        "the weights and config.json disagree"
                    )
    except Exception as e:  # safetensors raises its own error types for corrupt files
        if isinstance(e, LoadError):
            raise
        raise LoadError(
            f"{file.name}: unreadable safetensors file ({e}); it is truncated or corrupt, download it again"
        ) from None


def _check_shape(name: str, tensor: torch.Tensor, param: torch.Tensor) -> None:
    if tuple(tensor.shape) != tuple(param.shape):
        raise LoadError(
            f"tensor {name} has shape {tuple(tensor.shape)} but config.json implies {tuple(param.shape)}"
        )


def _assign(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    setattr(owner, attr, torch.nn.Parameter(tensor, requires_grad=False))
