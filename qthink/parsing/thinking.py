"""The thinking format, the one place that knows it: `<think>` … `</think>` around the reasoning.

One rule everywhere (engine, server, viewer, usage counts): the reasoning ends at the FIRST
`</think>` the model writes after the prompt; what follows is the content, later `</think>`s
included. Thinking is open when the prompt ends inside `<think>` (the 2507 template) or when
the output starts with `<think>` (hybrid templates). Open thinking without `</think>` is all
reasoning (it never finished); output whose thinking never opened (thinking disabled) is all
content. Token ids come from the tokenizer's vocabulary, never from constants.

Two readings of a prompt whose last turn has no thinking marker, after vLLM's reasoning
parsers: `qwen3` (the default) takes the output as content unless it opens `<think>` itself;
`deepseek_r1` takes it as thinking until `</think>` (DeepSeek-R1 and its distills write the
thinking without opening it). A prompt that closed the thinking (`enable_thinking=False`) means
content under both.
"""

from dataclasses import dataclass
from typing import Protocol

from qthink.parsing.text_stream import StrippedStream, partial_suffix

THINK_START, THINK_END = "<think>", "</think>"
TURN_START = "<|im_start|>"
REASONING_PARSERS = ("qwen3", "deepseek_r1")


class Vocabulary(Protocol):
    def token_to_id(self, token: str) -> int | None: ...


@dataclass(frozen=True)
class ThinkingFormat:
    """The markers' text and ids; ids are None when the vocabulary has no such token."""

    start_id: int | None = None
    end_id: int | None = None
    start: str = THINK_START
    end: str = THINK_END
    turn_start_id: int | None = None  # where the last turn of a prompt begins
    opens_by_default: bool = False  # a last turn without markers opens the thinking (deepseek_r1)

    @classmethod
    def from_tokenizer(cls, tokenizer: Vocabulary, reasoning_parser: str = "qwen3") -> "ThinkingFormat":
        if reasoning_parser not in REASONING_PARSERS:
            raise ValueError(
                f"unknown reasoning parser {reasoning_parser!r}; known: {', '.join(REASONING_PARSERS)}"
            )
        return cls(
            tokenizer.token_to_id(THINK_START),
            tokenizer.token_to_id(THINK_END),
            turn_start_id=tokenizer.token_to_id(TURN_START),
            opens_by_default=reasoning_parser == "deepseek_r1",
        )

    def prompt_opens_thinking(self, prompt_ids: list[int]) -> bool:
        """True when the prompt's last turn ends inside an open <think> (the 2507 generation
        prompt); for a last turn without markers, what the reasoning parser assumes."""
        for token in reversed(prompt_ids):
            if token == self.end_id:
                return False
            if token == self.start_id:
                return True
            if token == self.turn_start_id:
                break
        return self.opens_by_default

    def split(self, text: str, thinking: bool) -> tuple[str | None, str | None]:
        """(reasoning, content) of generated text; `thinking` says the prompt opened <think>.
        Newlines around either part are stripped; an empty content is None."""
        opened = text.startswith(self.start)
        body = text[len(self.start) :] if opened else text
        if not (thinking or opened):
            return None, body.strip("\n")
        reasoning, marker, content = body.partition(self.end)
        if not marker:
            return reasoning.strip("\n"), None
        return reasoning.strip("\n"), content.strip("\n") or None

    def stream(self, thinking: bool) -> "ThinkingStream":
        """A splitter for text arriving in deltas; its deltas add up to `split` of the whole."""
        return ThinkingStream(self, thinking)

    def tokens(self, thinking: bool) -> "ThinkingTokens":
        """A tracker for generated token ids, one at a time."""
        return ThinkingTokens(self, thinking)

    def token_parts(self, token_ids: list[int], thinking: bool) -> list[bool]:
        """For each generated token, whether it belongs to the thinking (its </think> included)."""
        tracker = self.tokens(thinking)
        return [tracker.observe(t) for t in token_ids]

    def reasoning_tokens(self, token_ids: list[int], thinking: bool) -> int:
        """How many generated tokens are reasoning: the thinking part without its </think>."""
        tracker = self.tokens(thinking)
        for t in token_ids:
            tracker.observe(t)
        return tracker.num_reasoning_tokens


class ThinkingTokens:
    """Where a sequence is, token by token: inside the thinking or past it."""

    def __init__(self, fmt: ThinkingFormat, thinking: bool):
        self.fmt = fmt
        self.open = thinking
        self.started = False
        self.num_reasoning_tokens = 0  # thinking tokens other than the closing </think>

    def observe(self, token_id: int) -> bool:
        """Take the next generated token; True when it belongs to the thinking."""
        first, self.started = not self.started, True
        if first and token_id == self.fmt.start_id:
            self.open = True
        elif not self.open:
            return False
        elif token_id == self.fmt.end_id:
            self.open = False
            return True
        self.num_reasoning_tokens += 1
        return True


class ThinkingStream:
    """Text deltas in, (reasoning delta, content delta) out. A marker cut across deltas is held
    back until it is whole; newlines the whole split strips are held back until text follows."""

    def __init__(self, fmt: ThinkingFormat, thinking: bool):
        self.fmt = fmt
        self.thinking = thinking
        self.started = False
        self.pending = ""
        self.reasoning = StrippedStream("\n")
        self.content = StrippedStream("\n")

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        """Route new text; `final=True` on the last delta releases what was held back for a
        marker that never came (thinking cut off right after "<", say)."""
        self.pending += text
        if not self.started:
            if self.fmt.start.startswith(self.pending) and not final:
                return "", ""  # may still become "<think>"
            self.started = True
            if self.pending.startswith(self.fmt.start):
                self.thinking, self.pending = True, self.pending[len(self.fmt.start) :]
        to_reasoning = to_content = ""
        if self.thinking:
            at = self.pending.find(self.fmt.end)
            if at >= 0:
                to_reasoning, to_content = self.pending[:at], self.pending[at + len(self.fmt.end) :]
                self.thinking, self.pending = False, ""
            else:
                keep = 0 if final else partial_suffix(self.pending, self.fmt.end)
                cut = len(self.pending) - keep
                to_reasoning, self.pending = self.pending[:cut], self.pending[cut:]
        else:
            to_content, self.pending = self.pending, ""
        return self.reasoning.push(to_reasoning), self.content.push(to_content)
