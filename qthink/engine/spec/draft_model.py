"""Draft-model drafter: a small checkpoint with the target's vocabulary proposes k tokens by
greedy decoding over its own paged KV cache, one batched forward per drafted token."""

from qthink.config import ConfigError, EngineConfig, ModelConfig
from qthink.engine.block_manager import BlockManager
from qthink.engine.runner import ModelRunner
from qthink.engine.sampling_params import SamplingParams
from qthink.engine.scheduler import ScheduledBatch
from qthink.engine.sequence import Sequence
from qthink.loader import load_model, resolve_model

GREEDY = SamplingParams(temperature=0)


def draft_model_config(path: str) -> ModelConfig:
    """The draft checkpoint's architecture, for the memory plan before anything loads."""
    return ModelConfig.from_pretrained(resolve_model(path))


class DraftModelProposer:
    """Each target sequence has a shadow sequence in the draft's cache. A step first brings the
    shadow to the target's committed text (keeping the K/V of the prefix they share: accepted
    drafts cost nothing again), then drafts greedily. A greedy draft is deterministic, so the
    target verifies it as it verifies n-gram drafts."""

    def __init__(self, path: str, target: ModelConfig, config: EngineConfig, dtype, device, num_blocks: int):
        model_dir = resolve_model(path)
        self.model_config = draft_model_config(path)
        if self.model_config.vocab_size != target.vocab_size:
            raise ConfigError(
                f"speculative_config model {path!r} has a vocabulary of {self.model_config.vocab_size} "
                f"tokens, the target {target.vocab_size}: the draft must share the target's tokenizer"
            )
        model = load_model(model_dir, dtype, device, config=self.model_config)
        self.runner = ModelRunner(model, self.model_config, config, device, num_blocks)
        self.blocks = BlockManager(num_blocks, config.block_size, enable_prefix_caching=False)
        self.shadows: dict[Sequence, Sequence] = {}

    def propose(self, wanted: dict[Sequence, int], running: list[Sequence]) -> None:
        """Set draft_ids on the sequences in `wanted` (up to their k tokens each)."""
        for seq in [s for s in self.shadows if s not in running]:
            self.blocks.free(self.shadows.pop(seq))  # finished or preempted
        shadows = {seq: self._synced(seq) for seq in wanted}
        for step in range(max(wanted.values(), default=0)):
            batch = ScheduledBatch()
            for seq, shadow in shadows.items():
                n = len(shadow) - shadow.num_computed_tokens
                if step < wanted[seq] and self.blocks.can_grow(shadow, n):
                    self.blocks.grow(shadow, n)
                    batch.add(shadow, n)
            if not batch:
                break
            for shadow, sampled in self.runner.run(batch).items():
                shadow.num_computed_tokens = len(shadow)
                shadow.token_ids.append(sampled[0].token)
        for seq, shadow in shadows.items():
            seq.draft_ids = shadow.token_ids[len(seq) :]

    def _synced(self, seq: Sequence) -> Sequence:
        """The shadow holding the target's committed tokens, its K/V kept for the shared prefix."""
        shadow = self.shadows.get(seq)
        if shadow is None:
            shadow = self.shadows[seq] = Sequence(seq.request_id, seq.index, [], GREEDY, 0)
        shared = 0
        for a, b in zip(shadow.token_ids, seq.token_ids):
            if a != b:
                break
            shared += 1
        shadow.token_ids = list(seq.token_ids)
        shadow.num_computed_tokens = min(shadow.num_computed_tokens, shared, len(seq) - 1)
        self.blocks.truncate(shadow)
        return shadow
