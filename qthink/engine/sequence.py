"""Sequence: one sample of one request — its tokens, KV blocks, progress and thinking state."""

import itertools
from enum import Enum
from typing import TYPE_CHECKING

import torch

from qthink.engine.loop_guard import LoopGuard, LoopGuardConfig
from qthink.engine.sampling_params import SamplingParams
from qthink.parsing.thinking import ThinkingFormat

if TYPE_CHECKING:
    from qthink.engine.structured import GrammarState

NO_THINKING_IDS = ThinkingFormat()  # for sequences made without a tokenizer (tests of the scheduler)

_ids = itertools.count()


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(
        self,
        request_id: str,
        index: int,
        prompt_ids: list[int],
        params: SamplingParams,
        max_tokens: int,
        eos_ids: tuple[int, ...] = (),
        thinking_format: ThinkingFormat = NO_THINKING_IDS,
    ):
        self.seq_id = next(_ids)
        self.request_id = request_id
        self.index = index
        self.token_ids = list(prompt_ids)
        self.num_prompt_tokens = len(prompt_ids)
        self.params = params
        self.max_tokens = max_tokens
        self.eos_ids = eos_ids
        self.status = Status.WAITING
        self.block_table: list[int] = []
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.num_cached_tokens = 0  # of those, found in the prefix cache
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.error: str | None = None
        self.generator = _generator(params.seed, index)
        self.prompt_opens_thinking = thinking_format.prompt_opens_thinking(prompt_ids)
        self.thinking_tokens = thinking_format.tokens(self.prompt_opens_thinking)
        self.end_thinking_now = False  # a client asked it to stop thinking and answer
        self.wait_for: Sequence | None = None  # a sibling whose prompt blocks this one reuses
        self.grammar: GrammarState | None = None  # a GrammarState once the answer is constrained
        self.grammar_pending = False  # its grammar is still compiling: the scheduler holds it back
        self.draft_ids: list[int] = []  # speculative tokens proposed for this step, not yet verified
        guard = LoopGuardConfig.parse(params.loop_guard)
        self.loop_guard = LoopGuard(guard) if guard is not None and self.thinking else None
        self.thinking_looped = False  # the loop guard found the thinking repeating itself
        self.thinking_cut_by: str | None = None  # "thinking_budget", "end_thinking" or "loop_guard"
        self.forced_tokens: list[int] = []  # a span the logits processors force, first token next

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_pending_tokens(self) -> int:
        """Tokens still to run through the model before the next sample."""
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def thinking(self) -> bool:
        """True while the output is inside the thinking (before its first </think>)."""
        return self.thinking_tokens.open

    @property
    def num_thinking_tokens(self) -> int:
        return self.thinking_tokens.num_reasoning_tokens

    def append(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        was_thinking = self.thinking_tokens.observe(token_id)
        if self.grammar is not None:
            if self.grammar.active:
                self.grammar.observe(token_id)
            elif was_thinking and not self.thinking:
                self.grammar.active = True  # the answer after </think> is constrained
        if self.loop_guard is not None and was_thinking and self.thinking:
            self.thinking_looped = self.thinking_looped or self.loop_guard.observe(token_id)

    def take_forced(self, token: int) -> list[int]:
        """The rest of the forced span once its first token is sampled: no model run could
        change them, so they are appended with it."""
        rest = self.forced_tokens[1:] if self.forced_tokens[:1] == [token] else []
        self.forced_tokens = []
        return rest

    def thinking_must_close(self) -> bool:
        """The thinking has to be closed now: its budget is spent or it loops."""
        return self.thinking and (self.thinking_budget_spent() or self.thinking_looped)

    def thinking_budget_spent(self) -> bool:
        if not self.thinking:
            return False
        budget = self.params.max_thinking_tokens
        return self.end_thinking_now or (budget is not None and self.num_thinking_tokens >= budget)

    def reset_for_recompute(self) -> None:
        """Preempted: its blocks are gone, so every token is recomputed when it runs again."""
        self.block_table = []
        self.num_computed_tokens = 0
        self.status = Status.WAITING


def _generator(seed: int | None, index: int) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator().manual_seed(seed * 1_000_003 + index)
