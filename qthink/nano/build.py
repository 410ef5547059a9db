"""qthink-nano as a file: the compact trained weights shipped in the package, expanded on first use
into a standard Hugging Face checkpoint (full vocabulary) in the user cache."""

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from qthink.cache import cache_dir
from qthink.nano.train import CONSTANT, STAGES, Compact, TrainConfig, compact, model_config, train
from qthink.random_checkpoint import tokenizer_files_dir, write_checkpoint

ARTIFACT = Path(__file__).parent / "nano.safetensors"
FULL_VOCAB = 151_936
UNUSED_LOGIT_WEIGHT = -1e4  # times the constant dimension: unused tokens sit far below every used one


def save_artifact(model, vocab: list[int], cfg: TrainConfig, path: Path = ARTIFACT) -> Path:
    state, _ = compact(model, vocab)
    state["vocab_ids"] = torch.tensor(vocab, dtype=torch.int64)
    save_file(state, path, metadata={"train_config": json.dumps(cfg.__dict__)})
    return path


def expand(artifact: Path, out: Path) -> Path:
    """Write the full-vocabulary checkpoint: used rows from the compact model, unused rows
    zero in the embedding and, in lm_head, a large negative weight on the constant dimension."""
    compact = load_file(artifact)
    vocab = compact.pop("vocab_ids")
    with open(artifact, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    cfg = TrainConfig(**json.loads(header["__metadata__"]["train_config"]))
    embed = torch.zeros(FULL_VOCAB, cfg.hidden, dtype=torch.bfloat16)
    head = torch.zeros(FULL_VOCAB, cfg.hidden, dtype=torch.bfloat16)
    head[:, 0] = UNUSED_LOGIT_WEIGHT
    embed[:, 0] = CONSTANT  # unused input tokens carry the constant dimension too
    embed[vocab] = compact.pop("model.embed_tokens.weight")
    head[vocab] = compact.pop("lm_head.weight")
    state = {"model.embed_tokens.weight": embed, "lm_head.weight": head, **compact}
    write_checkpoint(out, model_config(cfg, FULL_VOCAB), state, chat_template="thinking-2507")
    return out


def digest(path: Path) -> str:
    """A short content hash: the cache folder of an artefact, and the rebuild's check."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def ensure_nano(rebuild: bool = False) -> Path:
    """The qthink-nano checkpoint folder, built once into the cache (seconds, no training)."""
    if rebuild:
        retrain(ARTIFACT)
    out = cache_dir() / "nano" / digest(ARTIFACT)
    if not (out / "model.safetensors").is_file():
        tmp = out.with_name(out.name + ".tmp")
        expand(ARTIFACT, tmp)
        tmp.rename(out)
    return out


def load_compact(artifact: Path) -> Compact:
    state = load_file(artifact)
    return state, state.pop("vocab_ids").tolist()


def retrain(
    path: Path, stages: tuple[TrainConfig, ...] = STAGES, start: Compact | None = None, log=print
) -> Path:
    """Train each stage from the previous one's weights (the first from scratch unless `start`
    is given), with fixed seeds, and write the compact artefact to `path`."""
    from qthink.tokenizer import Tokenizer

    # One thread: float sums then do not depend on the machine's core count, so the rebuild
    # reproduces the shipped weights bit for bit (and a busy 2-core machine runs it faster).
    torch.set_num_threads(1)
    tokenizer = Tokenizer.from_pretrained(tokenizer_files_dir(), chat_template="thinking-2507")
    for number, cfg in enumerate(stages, 1):
        log(f"stage {number} of {len(stages)}: {cfg.steps} steps")
        model, vocab = train(tokenizer, cfg, log, start)
        start = compact(model, vocab)
    return save_artifact(model, vocab, stages[-1], path)
