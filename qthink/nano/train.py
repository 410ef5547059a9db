"""Train qthink-nano: a plain PyTorch loop over a compact vocabulary, deterministic from a seed."""

import math
import random
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from qthink.config import ModelConfig
from qthink.model.layers import RotaryEmbedding
from qthink.model.qwen3 import Qwen3ForCausalLM
from qthink.nano.data import BASE_MIX, CHECK_MIX, COPY_MIX, MIX, SCHEMA_MIX, TOOLS_MIX, conversation, render
from qthink.random_checkpoint import QWEN3_4B_CONFIG

Row = tuple[list[int], list[int]]  # token ids and loss mask of one rendered conversation
Compact = tuple[dict[str, torch.Tensor], list[int]]  # bf16 weights and the id of each vocabulary row
CONSTANT = 0.1  # hidden dimension 0 carries this value unchanged through the residual stream


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 2400
    batch: int = 16
    pool: int = 8
    lr: float = 3e-3
    warmup: int = 40
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 1
    head_dim: int = 32
    intermediate: int = 384
    vocab_samples: int = 1000
    mix: dict[str, float] = field(default_factory=lambda: dict(BASE_MIX))


# The base tasks from scratch, then the new ones (with the base tasks replayed) from its weights,
# then calling tools from their schema, in two stages, then copying, then thinking through the
# listed tools (everything before replayed).
STAGES = (
    TrainConfig(),
    TrainConfig(seed=1, steps=1600, lr=1.5e-3, warmup=20, mix=dict(MIX)),
    TrainConfig(seed=2, steps=1200, lr=1e-3, warmup=20, mix=dict(TOOLS_MIX)),
    TrainConfig(seed=3, steps=2000, lr=1.2e-3, warmup=20, mix=dict(SCHEMA_MIX)),
    TrainConfig(seed=4, steps=6000, lr=1.5e-3, warmup=20, mix=dict(COPY_MIX)),
    TrainConfig(seed=5, steps=3000, lr=1.5e-3, warmup=20, mix=dict(CHECK_MIX)),
)


def model_config(cfg: TrainConfig, vocab_size: int) -> dict:
    """A Qwen3 config.json for this size (the shipped checkpoint uses the real vocabulary)."""
    return dict(
        QWEN3_4B_CONFIG,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=4096,
        max_window_layers=cfg.layers,
        tie_word_embeddings=False,
        vocab_size=vocab_size,
        torch_dtype="bfloat16",
    )


def corpus_vocabulary(tokenizer, cfg: TrainConfig, batches: list[list[Row]]) -> list[int]:
    """The control tokens, every token the training batches use, and a wide sample of what the
    generator produces (so held-out prompts rarely meet a token without an embedding)."""
    rng = random.Random(cfg.seed + 1)
    ids = set(range(151643, 151669))
    for _ in range(cfg.vocab_samples):
        ids.update(render(tokenizer, *conversation(rng, cfg.mix))[0])
    for rows in batches:
        for row_ids, _ in rows:
            ids.update(row_ids)
    return sorted(ids)


def build_model(cfg: TrainConfig, vocab_size: int) -> Qwen3ForCausalLM:
    torch.manual_seed(cfg.seed)
    model = Qwen3ForCausalLM(ModelConfig.from_dict(model_config(cfg, vocab_size)))
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            torch.nn.init.ones_(p)
        else:
            torch.nn.init.normal_(p, std=0.02)
    model.model.rotary = RotaryEmbedding(cfg.head_dim, model.config.rope_theta)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = CONSTANT
        for layer in model.model.decoder_layers():
            layer.self_attn.o_proj.weight[0].zero_()
            layer.mlp.down_proj.weight[0].zero_()
    _pin_constant_dimension(model)
    return model


def _pin_constant_dimension(model: Qwen3ForCausalLM) -> None:
    """Keep dimension 0 of the residual stream constant: nothing writes to it and the final norm
    passes it through, so it acts as a bias input for the output layer (see `export`)."""

    def zero(index):
        def hook(grad):
            grad = grad.clone()
            grad[index] = 0
            return grad

        return hook

    model.model.embed_tokens.weight.register_hook(zero((slice(None), 0)))
    model.model.norm.weight.register_hook(zero(0))
    for layer in model.model.decoder_layers():
        layer.self_attn.o_proj.weight.register_hook(zero(0))
        layer.mlp.down_proj.weight.register_hook(zero(0))


def training_batches(tokenizer, cfg: TrainConfig) -> list[list[Row]]:
    """Every step's rendered conversations, grouped by length (padding would otherwise double
    the cost): each pool of `pool` batches is sorted by length, cut, and served in seeded order."""
    rng = random.Random(cfg.seed)
    batches: list[list[Row]] = []
    while len(batches) < cfg.steps:
        rows = [render(tokenizer, *conversation(rng, cfg.mix)) for _ in range(cfg.batch * cfg.pool)]
        rows.sort(key=lambda row: len(row[0]))
        groups = [rows[i : i + cfg.batch] for i in range(0, len(rows), cfg.batch)]
        rng.shuffle(groups)
        batches.extend(groups)
    return batches[: cfg.steps]


def collate(rows: list[Row], remap: dict[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded compact ids and the loss mask, both [batch, longest]."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, (row_ids, row_mask) in enumerate(rows):
        ids[r, : len(row_ids)] = torch.tensor([remap[t] for t in row_ids])
        mask[r, : len(row_mask)] = torch.tensor(row_mask, dtype=torch.bool)
    return ids, mask


def compact(model: Qwen3ForCausalLM, vocab: list[int]) -> Compact:
    """The weights as shipped (bf16) with their vocabulary: what a next stage starts from."""
    return {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}, vocab


def _start_from(model: Qwen3ForCausalLM, start: Compact) -> None:
    """Load a previous stage's weights; vocabulary rows it lacks keep their fresh initialisation."""
    state, _ = start
    with torch.no_grad():
        for name, p in model.state_dict().items():
            p[: state[name].shape[0]].copy_(state[name].float())


def train(
    tokenizer, cfg: TrainConfig, log=print, start: Compact | None = None
) -> tuple[Qwen3ForCausalLM, list[int]]:
    """Returns the trained compact model and the full-vocabulary id of each compact row; from
    `start` (a previous stage's compact weights) when given, its vocabulary extended."""
    torch.use_deterministic_algorithms(True)
    batches = training_batches(tokenizer, cfg)
    vocab = corpus_vocabulary(tokenizer, cfg, batches)
    if start is not None:
        known = set(start[1])
        vocab = start[1] + [t for t in vocab if t not in known]
    remap = {t: i for i, t in enumerate(vocab)}
    model = build_model(cfg, len(vocab))
    if start is not None:
        _start_from(model, start)
    decay = [p for n, p in model.named_parameters() if not n.endswith("norm.weight")]
    keep = [p for n, p in model.named_parameters() if n.endswith("norm.weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": keep, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    began = time.time()
    for step, rows in enumerate(batches):
        ids, mask = collate(rows, remap)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _schedule(step, cfg)
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        logits = model(ids[:, :-1], positions[:, :-1])
        target = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            log(f"step {step:4d}  loss {loss.item():.4f}  {time.time() - began:6.0f}s")
    return model, vocab


def _schedule(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
