"""The Qwen3 (and Qwen2) decoder in plain PyTorch, with Hugging Face's tensor names."""

from typing import cast

import torch
from torch import nn

from qthink.config import ModelConfig
from qthink.kernels import kernel_ops
from qthink.model.attention import Attention, AttentionMetadata, KVCache, native_decode_step
from qthink.model.greedy_head import GreedyHead
from qthink.model.layers import MLP, Embedding, RMSNorm, RotaryEmbedding
from qthink.model.parallel import SINGLE, VocabParallelEmbedding
from qthink.model.quant import shared_input_linears


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = Attention(
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.attention_bias,
            cfg.qk_norm,
            cfg.rms_norm_eps,
        )
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, h, cos, sin, meta, cache):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, meta, cache)
        return h + self.mlp(self.post_attention_layernorm(h))

    def decode_step(self, h, x, next_norm: RMSNorm, cos, sin, meta: AttentionMetadata, cache: KVCache):
        """`forward` of a native decode step (`native_decode_step`): takes the residual stream h
        and x, its input norm; returns the new stream and its `next_norm`, each residual add
        fused with the norm after it."""
        ops = kernel_ops()
        attn = self.self_attn.decode_step(x, cos, sin, meta, cache)
        norm = self.post_attention_layernorm
        h, x = ops.add_rms_norm(attn, h, norm.weight, norm.eps)
        mlp = self.mlp
        gate, up = shared_input_linears(x, (mlp.gate_proj, mlp.up_proj))
        out = mlp.down_proj(ops.silu_mul(gate, up))
        return ops.add_rms_norm(out, h, next_norm.weight, next_norm.eps)


class Qwen3Model(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens: Embedding | VocabParallelEmbedding = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope)

    def decoder_layers(self) -> list[DecoderLayer]:
        return [layer for layer in self.layers if isinstance(layer, DecoderLayer)]


class Qwen3ForCausalLM(nn.Module):
    """`forward(input_ids, positions)` runs whole sequences ([B, T], causal, no cache) or,
    with `meta` and `caches`, one engine step over a flattened [T] batch of many sequences.
    Tensor parallelism is applied from outside (`qthink.model.parallel.apply_tp`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tp = SINGLE  # apply_tp sets this rank's group
        self.tp_split_dims: dict[str, int] = {}  # and which dimension each split parameter lost
        self.model: Qwen3Model = Qwen3Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.greedy_head: GreedyHead | None = None

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata | None = None,
        caches: list[KVCache] | None = None,
    ) -> torch.Tensor:
        h = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary.cos_sin(positions, h.dtype)
        if meta is not None and caches and self._native_decode_step(h, meta, caches):
            return self._decode_step(h, cos, sin, meta, caches)
        for i, layer in enumerate(self.model.layers):
            h = layer(h, cos, sin, meta, caches[i] if caches else None)
        return self.model.norm(h)

    def _native_decode_step(self, h: torch.Tensor, meta: AttentionMetadata, caches: list[KVCache]) -> bool:
        layers = self.model.layers
        every_layer = len(layers) == len(caches) and all(isinstance(layer, DecoderLayer) for layer in layers)
        return every_layer and self.tp.size == 1 and native_decode_step(h, meta, caches[0], self.config)

    def _decode_step(self, h, cos, sin, meta: AttentionMetadata, caches: list[KVCache]) -> torch.Tensor:
        """A decode step in a few native calls per layer; the same roundings as `forward`."""
        layers = cast(list[DecoderLayer], list(self.model.layers))
        x = layers[0].input_layernorm(h)
        next_norms = [layer.input_layernorm for layer in layers[1:]] + [self.model.norm]
        for layer, next_norm, cache in zip(layers, next_norms, caches):
            h, x = layer.decode_step(h, x, next_norm, cos, sin, meta, cache)
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata | None = None,
        caches: list[KVCache] | None = None,
        logits_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits, only at `logits_indices` of the flattened tokens when given (the lm_head
        is the largest matrix: never compute rows nobody samples)."""
        h = self.hidden_states(input_ids, positions, meta, caches)
        if logits_indices is not None:
            h = h[logits_indices]
        return self.lm_head(h)

    def greedy(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        caches: list[KVCache],
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        """The greedy token at each of `logits_indices` (int64): `forward`'s argmax, without
        the logits where the output layer's native kernel takes them (`GreedyHead`)."""
        if self.greedy_head is None or self.greedy_head.lm_head is not self.lm_head:
            self.greedy_head = GreedyHead(self.lm_head)  # built on first use, after quantization
        h = self.hidden_states(input_ids, positions, meta, caches)
        return self.greedy_head(h[logits_indices])
