"""Prompts tokenized off the event loop, on a small pool of worker threads, after a check by
characters that refuses a text no tokenization could fit in the context."""

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from qthink.server.errors import APIError

TOKENIZE_WORKERS = 2  # a long prompt waits for a worker; it never runs on the event loop
# The workers run at a lower CPU priority than the engine and the event loop: on a machine with
# few cores, a long text tokenizing takes the time the streams already running leave over.
WORKER_NICENESS = 5
# Canonical composition (NFC) joins at most four code points into one (a base letter and three
# marks, or three Hangul jamo into one syllable), so a normalizing tokenizer sees at least a
# quarter of the characters it is given.
NORMALIZATION_SHRINK = 4
REASONING_KEYS = ("reasoning_content", "reasoning")  # a template may drop these: not counted
THINK_END = "</think>"


class PromptTokenizer:
    """Turns text and chat messages into token ids on its own threads, never the event loop."""

    def __init__(self, tokenizer, max_model_len: int, workers: int = TOKENIZE_WORKERS):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.chars_per_token = chars_per_token_bound(tokenizer)
        self.max_chars = max_model_len * self.chars_per_token
        # tokenizers would hand even one text to its own thread pool, at normal priority: the
        # work stays on the (lowered) worker thread instead
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self.pool = ThreadPoolExecutor(
            workers, thread_name_prefix="qthink-tokenize", initializer=_lower_priority
        )

    def check_chars(self, chars: int, param: str) -> None:
        """A 400 when `chars` characters cannot fit the context however they tokenize."""
        if chars > self.max_chars:
            raise APIError(
                400,
                f"{param} holds {chars:,} characters, more than any prompt that fits this model's "
                f"context of {self.max_model_len:,} tokens can hold ({self.max_chars:,}: "
                f"{self.chars_per_token} characters per token at most, for this tokenizer)",
                param=param,
                code="context_length_exceeded",
            )

    def check_ids(self, ids: list[int], param: str) -> None:
        if len(ids) > self.max_model_len:
            raise APIError(
                400,
                f"{param} has {len(ids):,} tokens, but this model's context is {self.max_model_len:,} tokens",
                param=param,
                code="context_length_exceeded",
            )

    async def encode(self, text: str, param: str = "prompt") -> list[int]:
        self.check_chars(len(text), param)
        return await self._run(self.tokenizer.encode, text)

    async def chat(self, messages: list[dict], tools: list[dict] | None, **kwargs) -> list[int]:
        """The chat template's prompt ids; `kwargs` go to apply_chat_template."""
        self.check_chars(template_chars(messages) + template_chars(tools), "messages")
        return await self._run(
            partial(self.tokenizer.apply_chat_template, messages, tools=tools, tokenize=True, **kwargs)
        )

    async def decode(self, ids: list[int]) -> str:
        return await self._run(self.tokenizer.decode, ids)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _lower_priority() -> None:
    try:  # Linux: a thread's own nice value
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
    except OSError:
        pass


def chars_per_token_bound(tokenizer) -> int:
    """The most characters one token can stand for: its longest vocabulary entry (a byte-level
    entry has one character per byte, and a byte is at least one character of text), times the
    shrink of Unicode normalization when the tokenizer normalizes."""
    backend = tokenizer.backend
    longest = max(len(entry) for entry in backend.get_vocab(with_added_tokens=True))
    return longest * (NORMALIZATION_SHRINK if backend.normalizer is not None else 1)


def template_chars(value) -> int:
    """Characters in every string (keys too) of messages or tools, which the template may write
    into the prompt; an assistant's reasoning, which templates drop from past turns, is not counted."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(template_chars(v) for v in value)
    if isinstance(value, dict):
        return sum(
            len(k) + template_chars(_kept(value, k, v)) for k, v in value.items() if k not in REASONING_KEYS
        )
    return 0


def _kept(item: dict, key: str, value):
    """An assistant's content without the thinking before its last </think>, which templates drop."""
    if key == "content" and item.get("role") == "assistant" and isinstance(value, str):
        return value.rpartition(THINK_END)[2]
    return value
