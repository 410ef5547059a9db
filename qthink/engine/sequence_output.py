"""SequenceOutput: one sequence's output so far — incremental text, stop strings, logprobs."""

from qthink.engine.outputs import CompletionOutput, Logprob
from qthink.engine.sequence import Sequence
from qthink.engine.stop import StopStringMatcher
from qthink.tokenizer import IncrementalDetokenizer


class SequenceOutput:
    """Accumulates what one sequence has produced, in the shape the API returns."""

    def __init__(self, seq: Sequence, tokenizer):
        self.seq = seq
        self.tokenizer = tokenizer
        params = seq.params
        self.detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=params.skip_special_tokens)
        self.stops = (
            StopStringMatcher(params.stop, params.include_stop_str_in_output) if params.stop else None
        )
        self.text = ""
        self.logprobs: list[dict[int, Logprob]] | None = [] if params.logprobs is not None else None
        self.cumulative_logprob = 0.0
        self.num_emitted_tokens = 0

    def add_tokens(self, token_ids: list[int], logprobs: list[dict[int, Logprob]] | None) -> str | None:
        """Take newly appended tokens; returns the matched stop string when one ends the text."""
        self.num_emitted_tokens += len(token_ids)
        if self.logprobs is not None and logprobs is not None:
            self.logprobs.extend(logprobs)
            self.cumulative_logprob += sum(d[t].logprob for d, t in zip(logprobs, token_ids))
        delta = self.detokenizer.push(token_ids)
        if self.stops is None:
            self.text += delta
            return None
        emit, stopped, matched = self.stops.feed(delta)
        self.text += emit
        return matched if stopped else None

    def flush(self) -> None:
        """At the end of a sequence not stopped by a stop string, release held-back text: the
        detokenizer's tail (a character cut by max_tokens included), then the stop matcher's."""
        if isinstance(self.seq.stop_reason, str):
            return
        tail = self.detokenizer.finish()
        if self.stops is None:
            self.text += tail
            return
        emit, stopped, _ = self.stops.feed(tail)
        self.text += emit if stopped else emit + self.stops.flush()

    def completion(self) -> CompletionOutput:
        seq = self.seq
        token_ids = seq.output_ids[: self.num_emitted_tokens]
        return CompletionOutput(
            index=seq.index,
            text=self.text,
            token_ids=token_ids,
            cumulative_logprob=self.cumulative_logprob if self.logprobs is not None else None,
            logprobs=self.logprobs,
            finish_reason=seq.finish_reason,
            stop_reason=seq.stop_reason,
            thinking_cut_by=seq.thinking_cut_by,
        )
