"""Logits processors: every change to the model's next-token scores, as one ordered pipeline.

Constraints come first (the grammar's mask, forced tokens): they decide which tokens can come
next at all, so logprobs are reported after them. Reweighting comes last (penalties): it only
steers sampling, so logprobs stay those of the model. A loop guard or a speculative verifier
plugs in as one more processor.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from qthink.engine.sampler import SamplingBatch, apply_penalties
from qthink.engine.sequence import Sequence


@dataclass
class StepLogits:
    """What processors may read about the rows of one step's logits: row i is seqs[i]."""

    seqs: list[Sequence]
    sampling: SamplingBatch


class LogitsProcessor(Protocol):
    constrains: bool  # True: the logprobs are reported after it; False: it only steers sampling

    def __call__(self, logits: torch.Tensor, step: StepLogits) -> torch.Tensor:
        """The processed [rows, vocab] logits: changed in place, or a new tensor."""
        ...

    def touches(self, seq: Sequence) -> bool:
        """Whether this step it may change the sequence's rows (or state): False lets a greedy
        row skip the pipeline and take the raw argmax."""
        ...


class GrammarMask:
    """Structured output: -inf for every token the row's grammar cannot accept next."""

    constrains = True

    def __call__(self, logits: torch.Tensor, step: StepLogits) -> torch.Tensor:
        for row, seq in enumerate(step.seqs):
            if seq.grammar is not None and seq.grammar.active:
                seq.grammar.mask(logits[row])
        return logits

    def touches(self, seq: Sequence) -> bool:
        return seq.grammar is not None


class ThinkingBudget:
    """A row whose thinking must close (its budget is spent, a client asked, or the loop guard
    saw it repeat) is made to: the early-stop phrase, which holds </think>, is queued as the
    row's forced tokens."""

    constrains = True

    def __init__(self, encode: Callable[[str], list[int]], max_model_len: int):
        self.encode = encode
        self.max_model_len = max_model_len
        self.phrases: dict[str, list[int]] = {}

    def __call__(self, logits: torch.Tensor, step: StepLogits) -> torch.Tensor:
        for seq in step.seqs:
            if seq.forced_tokens or not seq.thinking_must_close():
                continue
            seq.thinking_cut_by = (
                "loop_guard"
                if seq.thinking_looped
                else "end_thinking"
                if seq.end_thinking_now
                else "thinking_budget"
            )
            phrase = seq.params.thinking_early_stop
            if phrase not in self.phrases:
                self.phrases[phrase] = self.encode(phrase)
            room = min(seq.max_tokens - seq.num_output_tokens, self.max_model_len - len(seq))
            seq.forced_tokens = self.phrases[phrase][:room]
        return logits

    def touches(self, seq: Sequence) -> bool:
        return bool(seq.forced_tokens) or seq.thinking_must_close()


class ForcedTokens:
    """A row with forced tokens queued can only sample the first; the engine appends the rest
    of the span with it, since no model run could change them."""

    constrains = True

    def __call__(self, logits: torch.Tensor, step: StepLogits) -> torch.Tensor:
        for row, seq in enumerate(step.seqs):
            if seq.forced_tokens:
                logits[row].fill_(float("-inf"))
                logits[row, seq.forced_tokens[0]] = 0.0  # the only choice: logprob 0
        return logits

    def touches(self, seq: Sequence) -> bool:
        return bool(seq.forced_tokens)


class Penalties:
    """min_tokens, repetition, frequency and presence penalties (the sampler's definitions)."""

    constrains = False

    def __call__(self, logits: torch.Tensor, step: StepLogits) -> torch.Tensor:
        return apply_penalties(logits, step.sampling)

    def touches(self, seq: Sequence) -> bool:
        """A penalty is set, or min_tokens still blocks EOS (drafts only lengthen the output)."""
        p = seq.params
        return (
            p.repetition_penalty != 1.0
            or bool(p.presence_penalty or p.frequency_penalty)
            or (p.min_tokens > seq.num_output_tokens)
        )


class LogitsPipeline:
    """Processors in order; constraints must all come before any reweighting."""

    def __init__(self, processors: list[LogitsProcessor]):
        kinds = [p.constrains for p in processors]
        if kinds != sorted(kinds, reverse=True):
            raise ValueError("every constraining logits processor must come before the reweighting ones")
        self.processors = processors

    def __call__(self, logits: torch.Tensor, step: StepLogits) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits the logprobs are taken from, logits to sample from)."""
        constrained = logits
        for processor in self.processors:
            logits = processor(logits, step)
            if processor.constrains:
                constrained = logits
        return constrained, logits

    def touches(self, seq: Sequence) -> bool:
        for processor in self.processors:  # a loop: this runs for every sequence every step
            if processor.touches(seq):
                return True
        return False


def default_pipeline(encode: Callable[[str], list[int]], max_model_len: int) -> LogitsPipeline:
    """The engine's order: the grammar, the thinking budget's forced phrase, then penalties."""
    return LogitsPipeline([GrammarMask(), ThinkingBudget(encode, max_model_len), ForcedTokens(), Penalties()])
