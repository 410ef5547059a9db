"""ModelRunner: owns the KV cache, turns a scheduled batch into tensors, runs the model, samples."""

import os
from typing import cast

import numpy as np
import torch
import torch.distributed as dist

from qthink.config import EngineConfig, ModelConfig
from qthink.engine.logits_processors import LogitsPipeline, StepLogits
from qthink.engine.sampler import SampledToken, SamplingBatch, sample, token_rows
from qthink.engine.scheduler import ScheduledBatch
from qthink.engine.sequence import Sequence
from qthink.engine.spec.rejection import verify_greedy
from qthink.engine.spec.verify import verify_drafts
from qthink.kernels.threads import torch_ops_on_one_thread
from qthink.model.attention import AttentionMetadata, KVCache
from qthink.model.quant import SMALL_M_BF16
from qthink.model.qwen3 import Qwen3ForCausalLM


class ModelRunner:
    def __init__(
        self,
        model: Qwen3ForCausalLM,
        model_config: ModelConfig,
        config: EngineConfig,
        device: torch.device,
        num_blocks: int,
        logits_pipeline: LogitsPipeline | None = None,
    ):
        self.model = model
        self.model_config = model_config
        self.config = config
        self.device = device
        self.block_size = config.block_size
        self.num_blocks = num_blocks
        self.tp = model.tp
        dtype = kv_cache_torch_dtype(config.kv_cache_dtype, next(model.parameters()).dtype)
        slots = num_blocks * config.block_size
        kv_heads = model_config.num_key_value_heads // self.tp.size
        self.caches = [
            KVCache.allocate(slots, kv_heads, model_config.head_dim, dtype, device)
            for _ in range(model_config.num_hidden_layers)
        ]
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.logits_pipeline = logits_pipeline or LogitsPipeline([])  # ranks > 0 never sample

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> dict[Sequence, list[SampledToken]]:
        """One forward over the batch; the tokens each sequence that samples now emits: one, or
        for a sequence with drafts, the verified drafts and one more."""
        # A few decoding sequences (one token each, or one plus its drafts): every matmul is a
        # native kernel, and torch's ops are small enough for one thread.
        small_decode = sum(batch.num_tokens) <= SMALL_M_BF16 and all(
            n == 1 + len(s.draft_ids) for s, n in zip(batch.seqs, batch.num_tokens)
        )
        with torch_ops_on_one_thread(small_decode and self.device.type == "cpu"):
            return self._run(batch)

    def _run(self, batch: ScheduledBatch) -> dict[Sequence, list[SampledToken]]:
        input_ids, positions, meta, sampled = self._prepare(batch)
        if not sampled:
            self.forward(input_ids, positions, meta, None)
            return {}
        seqs = [batch.seqs[i] for i in sampled]
        counts = [1 + len(s.draft_ids) for s in seqs]
        ends = np.cumsum(batch.num_tokens)[sampled].tolist()
        rows = torch.tensor(
            [r for end, c in zip(ends, counts) for r in range(end - c, end)], device=self.device
        )
        if self._all_plain_greedy(seqs):
            tokens = self.model.greedy(input_ids, positions, meta, self.caches, rows).tolist()
            return dict(zip(seqs, _greedy_emitted(tokens, seqs)))
        logits = self.forward(input_ids, positions, meta, rows)
        logits = cast(torch.Tensor, logits).float()  # given rows, forward returns their logits
        plain = [i for i, c in enumerate(counts) if c == 1]
        if len(plain) == len(seqs):
            return dict(zip(seqs, self._sample(logits, seqs)))
        starts = [sum(counts[:i]) for i in range(len(seqs))]
        spec = [i for i, c in enumerate(counts) if c > 1]
        spec_rows = [r for i in spec for r in range(starts[i], starts[i] + counts[i])]
        spec_seqs = [seqs[i] for i in spec]
        spec_logits = logits[spec_rows] if plain else logits  # every row verifies: no copy
        verified = verify_drafts(spec_logits, spec_seqs, self.logits_pipeline, self.generator)
        out = dict(zip(spec_seqs, verified))
        if plain:
            plain_seqs = [seqs[i] for i in plain]
            out.update(zip(plain_seqs, self._sample(logits[[starts[i] for i in plain]], plain_seqs)))
        return out

    def _all_plain_greedy(self, seqs: list[Sequence]) -> bool:
        """Every sequence takes the argmax of the raw logits: greedy, no logprobs, and no logits
        processor touches it (no penalty, grammar or forced token); one process holds the model."""
        if self.tp.size > 1:
            return False
        touches = self.logits_pipeline.touches
        for seq in seqs:
            if not seq.params.greedy or seq.params.logprobs is not None or touches(seq):
                return False
        return True

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[list[SampledToken]]:
        """One token per sequence from its row of float32 logits, shaped by the logits pipeline."""
        params = [s.params for s in seqs]
        prompts = [s.token_ids[: s.num_prompt_tokens] for s in seqs]
        outputs = [s.output_ids for s in seqs]
        sampling = SamplingBatch.build(
            params,
            prompts,
            outputs,
            [s.generator for s in seqs],
            logits.shape[-1],
            self.device,
            eos_ids=[s.eos_ids for s in seqs],
            global_generator=self.generator,
        )
        constrained, processed = self.logits_pipeline(logits, StepLogits(seqs, sampling))
        return [[row] for row in token_rows(sample(constrained, sampling, processed))]

    @torch.inference_mode()
    def forward(self, input_ids, positions, meta, logits_indices) -> torch.Tensor | None:
        """The model over one step's tokens; rank 0 first sends the step to the other ranks."""
        if self.tp.size > 1 and self.tp.rank == 0:
            dist.broadcast_object_list([(input_ids, positions, meta, logits_indices)], src=0)
        if logits_indices is None:
            self.model.hidden_states(input_ids, positions, meta, self.caches)
            return None
        return self.model(input_ids, positions, meta, self.caches, logits_indices)

    def _prepare(self, batch: ScheduledBatch):
        """The step's tensors. Slot arithmetic runs in numpy (one small array op per sequence
        instead of several torch dispatches) and reaches torch once per tensor."""
        ids: list[int] = []
        pos: list[int] = []
        slots: list[np.ndarray] = []
        ctx_slots: list[np.ndarray] = []
        ctx_lens: list[int] = []
        sampled: list[int] = []
        for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_tokens)):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            tokens = seq.token_ids + seq.draft_ids if seq.draft_ids else seq.token_ids
            ids.extend(tokens[start:end])
            pos.extend(range(start, end))
            seq_slots = self._slots(seq.block_table, end)
            slots.append(seq_slots[start:end])
            ctx_slots.append(seq_slots)
            ctx_lens.append(end)
            if end == len(tokens):
                sampled.append(i)
        meta = AttentionMetadata(
            slot_mapping=self._tensor(np.concatenate(slots)),
            query_lens=list(batch.num_tokens),
            context_lens=ctx_lens,
            context_slots=[self._tensor(s) for s in ctx_slots],
        )
        if all(n == 1 + len(s.draft_ids) for s, n in zip(batch.seqs, batch.num_tokens)):
            # Decodes and verifications: each token is a decode query over its own prefix, so
            # the decode attention serves a few drafted tokens too (the context is read once
            # per token, cheap beside the weights at k + 1 <= 9).
            rows = [
                (s, c - n + j + 1) for s, c, n in zip(ctx_slots, ctx_lens, batch.num_tokens) for j in range(n)
            ]
            token_lens = [length for _, length in rows]
            padded = np.zeros((len(rows), max(token_lens)), dtype=np.int64)
            for row, (s, length) in enumerate(rows):
                padded[row, :length] = s[:length]
            lens = np.array(token_lens, dtype=np.int64)
            meta.decode_slots, meta.decode_lens = self._tensor(padded), self._tensor(lens)
            mask = np.arange(padded.shape[1])[None, :] < lens[:, None]
            meta.decode_mask = self._tensor(mask[:, None, None, :])
        as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=self.device)  # noqa: E731
        return as_tensor(ids), as_tensor(pos), meta, sampled

    def _slots(self, block_table: list[int], length: int) -> np.ndarray:
        blocks = np.asarray(block_table, dtype=np.int64)
        return (blocks[:, None] * self.block_size + np.arange(self.block_size)).ravel()[:length]

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)


def _greedy_emitted(tokens: list[int], seqs: list[Sequence]) -> list[list[SampledToken]]:
    """Each sequence's tokens from the argmax of its rows (one, or one per draft and one more):
    the verified drafts and the token after them."""
    out, start = [], 0
    for seq in seqs:
        picked = tokens[start : start + 1 + len(seq.draft_ids)]
        start += len(picked)
        emitted = verify_greedy(picked, seq.draft_ids) if seq.draft_ids else picked
        out.append([SampledToken(t, None, None, [], []) for t in emitted])
    return out


KV_CACHE_DTYPES = {
    "int8": torch.int8,
    "fp8": torch.float8_e4m3fn,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


def kv_cache_torch_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    """`auto` stores the cache in the model's dtype; int8 and fp8 halve a bf16 cache."""
    if name == "auto":
        return model_dtype
    if name not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be auto or one of {', '.join(KV_CACHE_DTYPES)}, got {name!r}")
    return KV_CACHE_DTYPES[name]


def default_threads() -> int:
    return int(os.environ.get("QTHINK_NUM_THREADS", 0)) or len(os.sched_getaffinity(0))
