"""Speculator: decides who drafts each step, asks the drafter, and keeps acceptance statistics."""

from typing import cast
from weakref import WeakKeyDictionary

from qthink.config import SpeculativeConfig
from qthink.engine.sequence import Sequence
from qthink.engine.spec.history import RequestHistory
from qthink.engine.spec.ngram import NgramDrafter


def _may_draft(seq: Sequence) -> bool:
    """Drafts skip sequences whose logits processors change state token by token: a grammar
    (its matcher walks the answer), a forced span, or thinking that must close now (the
    early-stop phrase is forced next). Their text is exactly that of plain decoding."""
    return seq.grammar is None and not seq.forced_tokens and not seq.thinking_must_close()


class SequenceSpecState:
    """One sequence's drafter and its recent acceptance rate (an exponential average)."""

    def __init__(self, config: SpeculativeConfig):
        self.drafter = (
            NgramDrafter(config.prompt_lookup_min, config.prompt_lookup_max, config.num_speculative_tokens)
            if config.method in ("ngram", "suffix")
            else None
        )
        self.acceptance = 1.0
        self.paused_until = 0


class Speculator:
    def __init__(self, config: SpeculativeConfig, max_model_len: int, draft_model=None):
        self.config = config
        self.max_model_len = max_model_len
        self.draft_model = draft_model  # a DraftModelProposer for method draft_model
        self.history = (
            RequestHistory(
                config.prompt_lookup_min, config.prompt_lookup_max, config.suffix_decoding_max_cached_requests
            )
            if config.method == "suffix"
            else None
        )
        self.states: WeakKeyDictionary[Sequence, SequenceSpecState] = WeakKeyDictionary()
        self.step = 0
        self.reset_stats()

    def reset_stats(self) -> None:
        self.num_drafts = 0  # sequence-steps that verified a draft
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        self.accepted_per_position = [0] * self.config.num_speculative_tokens

    def propose(self, running: list[Sequence]) -> None:
        """Set `draft_ids` on the decoding sequences that speculate this step (others: [])."""
        self.step += 1
        decoding = [s for s in running if s.num_pending_tokens == 1]
        for seq in running:
            seq.draft_ids = []
        if len(decoding) > self.config.disable_by_batch_size:
            return
        wanted = {}
        for seq in decoding:
            state = self.states.setdefault(seq, SequenceSpecState(self.config))
            k = self._room(seq)
            if k > 0 and self.step >= state.paused_until and _may_draft(seq):
                wanted[seq] = k
        if self.draft_model is not None:
            self.draft_model.propose(wanted, running)
            return
        for seq, k in wanted.items():
            drafter = cast(NgramDrafter, self.states[seq].drafter)  # ngram or suffix: no draft model
            n, seq.draft_ids = drafter.match(seq.token_ids, k)
            if self.history is not None:
                # suffix: an earlier request that shares a longer suffix knows better (the
                # answer template recurs across requests, a short n-gram within one)
                seq.draft_ids = self.history.propose(seq.token_ids, k, longer_than=n) or seq.draft_ids

    def finished(self, seq: Sequence) -> None:
        """A sequence ended (stop or length): the suffix method drafts from its text from now on."""
        if self.history is not None:
            self.history.add(seq.token_ids)

    def _room(self, seq: Sequence) -> int:
        """Drafts that could still be emitted, leaving a slot for the token after them."""
        if seq.forced_tokens or seq.thinking_must_close():
            return 0  # the logits pipeline forces the next tokens: nothing to guess
        left = min(seq.max_tokens - seq.num_output_tokens, self.max_model_len - len(seq))
        return min(self.config.num_speculative_tokens, left - 1)

    def record(self, seq: Sequence, drafted: int, accepted: int) -> None:
        """Count one verified draft; pause the sequence while its acceptance stays low."""
        if drafted == 0:
            return
        self.num_drafts += 1
        self.num_draft_tokens += drafted
        self.num_accepted_tokens += accepted
        for i in range(accepted):
            self.accepted_per_position[i] += 1
        state = self.states.get(seq)
        if state is None:
            return
        floor = self.config.min_acceptance_rate
        state.acceptance = 0.8 * state.acceptance + 0.2 * accepted / drafted
        if state.acceptance < floor:
            state.paused_until = self.step + self.config.probe_interval
            state.acceptance = floor  # one good probe resumes, a bad one pauses again

    def stats(self) -> dict:
        drafted = self.num_draft_tokens
        return {
            "spec_decode_num_drafts": self.num_drafts,
            "spec_decode_num_draft_tokens": drafted,
            "spec_decode_num_accepted_tokens": self.num_accepted_tokens,
            "spec_decode_acceptance_rate": self.num_accepted_tokens / drafted if drafted else 0.0,
            # tokens emitted per verifying step: the accepted drafts plus the target's own token
            "spec_decode_mean_accepted_length": (
                1 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0
            ),
        }
