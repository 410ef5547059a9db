"""Scheduler: continuous batching under a token budget, chunked prefill, preemption by recompute."""

from collections import deque
from dataclasses import dataclass, field

from qthink.engine.block_manager import BlockManager
from qthink.engine.sequence import Sequence, Status


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)  # tokens each sequence runs this step

    def __bool__(self) -> bool:
        return bool(self.seqs)

    @property
    def is_decode(self) -> bool:
        return all(n == 1 for n in self.num_tokens)

    def add(self, seq: Sequence, num_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_tokens.append(num_tokens)


class Scheduler:
    """Each step takes one token for every decoding sequence first (decodes never stall),
    then fills the rest of the token budget with prefill chunks, oldest request first."""

    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def has_runnable(self) -> bool:
        """Some sequence could run now (not every waiting one is held for its grammar)."""
        return bool(self.running) or any(not s.grammar_pending for s in self.waiting)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        for seq in [s for s in self.running if s.num_pending_tokens == 1]:
            if seq.status is not Status.RUNNING:
                continue  # preempted while making room for an older sequence
            n = 1 + len(seq.draft_ids)
            if n > 1 and (n > budget or not self.blocks.can_grow(seq, n)):
                seq.draft_ids, n = [], 1  # drafts never take the room of a decode or preempt one
            if not self._make_room(seq, n):
                continue
            batch.add(seq, n)
            budget -= n
        for seq in [s for s in self.running if s.num_pending_tokens > 1]:
            if budget <= 0:
                break
            if seq.status is Status.RUNNING:
                budget -= self._add_chunk(batch, seq, budget)
        for seq in list(self.waiting):
            if budget <= 0 or len(self.running) >= self.max_num_seqs:
                break
            if seq.grammar_pending:
                continue  # its grammar is still compiling: the requests behind it go first
            if seq.wait_for is not None and not _prompt_done(seq.wait_for):
                break
            seq.wait_for = None
            if not seq.block_table:
                self.blocks.reuse_prefix(seq)
            taken = self._add_chunk(batch, seq, budget)
            if taken == 0:
                self.blocks.free(seq)
                seq.num_computed_tokens = seq.num_cached_tokens = 0
                break
            self.waiting.remove(seq)
            seq.status = Status.RUNNING
            self.running.append(seq)
            budget -= taken
        if not batch and self.running:
            # Every running sequence is stuck mid-prefill on a full cache: free the newest.
            self.preempt(self.running[-1])
            return self.schedule()
        return batch

    def _add_chunk(self, batch: ScheduledBatch, seq: Sequence, budget: int) -> int:
        chunk = min(seq.num_pending_tokens, budget)
        while chunk > 0 and not self.blocks.can_grow(seq, chunk):
            chunk //= 2  # take what fits now; the rest follows in later steps
        if chunk == 0:
            return 0
        self.blocks.grow(seq, chunk)
        batch.add(seq, chunk)
        return chunk

    def _make_room(self, seq: Sequence, num_tokens: int) -> bool:
        """Preempt the newest running sequences until `seq` fits; False if `seq` itself went."""
        while not self.blocks.can_grow(seq, num_tokens):
            victim = self.running[-1]
            self.preempt(victim)
            if victim is seq:
                return False
        self.blocks.grow(seq, num_tokens)
        return True

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.draft_ids = []
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def advance(self, batch: ScheduledBatch) -> None:
        """Record that the batch's tokens now have K/V in the cache."""
        for seq, n in zip(batch.seqs, batch.num_tokens):
            seq.num_computed_tokens += n - len(seq.draft_ids)  # drafts count once verified
            self.blocks.register_full_blocks(seq)

    def commit_drafts(self, seq: Sequence, drafts: list[int], start: int) -> None:
        """After verification: the drafts that are now the sequence's tokens from `start` on
        keep their K/V; the slots past them are freed, and full blocks are keyed."""
        if seq.finished:
            return
        kept = 0
        for drafted, token in zip(drafts, seq.token_ids[start:]):
            if drafted != token:
                break
            kept += 1
        seq.num_computed_tokens += kept
        self.blocks.truncate(seq)
        self.blocks.register_full_blocks(seq)

    def finish(self, seq: Sequence, reason: str, stop_reason=None) -> None:
        """End a sequence wherever it is (running, waiting or mid-prefill) and free its blocks."""
        if seq.finished:
            return
        seq.finish_reason, seq.stop_reason = reason, stop_reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        seq.status = Status.FINISHED


def _prompt_done(seq: Sequence) -> bool:
    return seq.finished or seq.num_computed_tokens >= seq.num_prompt_tokens - 1
