"""Split a thinking chain into steps (paragraphs) and label what each step does."""

import re
from bisect import bisect_right
from dataclasses import asdict, dataclass
from functools import cache
from itertools import accumulate

# Label -> cue phrases that open a step doing that. Checked in this order, so a step that
# opens "Wait, let me double-check" is a check, not a backtrack: the more specific cue wins.
CUES: dict[str, tuple[str, ...]] = {
    "verify": (
        "let me double-check",
        "let me double check",
        "double-check",
        "double check",
        "let me check",
        "let me verify",
        "let me confirm",
        "let's check",
        "let's verify",
        "let's double-check",
        "to verify",
        "to check",
        "to confirm",
        "just to be sure",
        "just to confirm",
        "sanity check",
        "checking",
        "verifying",
        "plugging back",
        "let me re-check",
        "let me recheck",
        "let me re-verify",
    ),
    "explore": (
        "alternatively",
        "another approach",
        "another way",
        "other approach",
        "let me try another",
        "let's try another",
        "or maybe",
        "what if",
        "maybe instead",
        "on the other hand",
    ),
    "backtrack": (
        "wait",
        "hold on",
        "but wait",
        "hmm, no",
        "no, that",
        "no wait",
        "actually,",
        "actually no",
        "oops",
        "that's not right",
        "that is not right",
        "that's wrong",
        "i made a mistake",
        "my mistake",
        "that can't be",
        "that doesn't make sense",
        "scratch that",
        "hmm, that",
    ),
    "conclude": (
        "so the answer",
        "so, the answer",
        "the answer is",
        "the final answer",
        "final answer",
        "therefore",
        "thus",
        "hence",
        "in conclusion",
        "so the final",
        "so, the final",
        "so overall",
        "putting it all together",
        "in summary",
        "to summarize",
        "so yes",
        "so, yes",
        "so it is",
        "so it's",
        "so that's",
        "so we get",
        "which gives",
        "that gives",
        "the result is",
        "i think that's",
        "that's the answer",
    ),
    "plan": (
        "first,",
        "first ",
        "let me start",
        "let's start",
        "to solve",
        "i need to",
        "we need to",
        "the user is asking",
        "the user asks",
        "the user wants",
        "the question",
        "the problem",
        "let me think about",
        "let me figure out",
        "let's figure out",
        "my plan",
        "the plan",
        "step 1",
        "let me break",
        "let's break",
        "the goal",
        "let's see",
        "let me see",
        "i should",
        "i'll start",
    ),
    "compute": (
        "let me compute",
        "let's compute",
        "let me calculate",
        "let's calculate",
        "computing",
        "calculating",
        "compute",
        "calculate",
        "multiply",
        "divide",
        "adding",
        "subtracting",
        "substituting",
        "simplify",
        "solving",
    ),
}
LABELS = (*CUES, "reason")
LABEL_TITLES = {
    "plan": "plan",
    "compute": "compute",
    "verify": "check",
    "backtrack": "backtrack",
    "explore": "alternative",
    "conclude": "conclude",
    "reason": "reason",
}

# Filler a step may open with before its real cue ("Hmm, wait", "So, first,").
_FILLER_WORD = re.compile(
    r"(?:hmm+|ok(?:ay)?|alright|right|so|well|and|but|oh|ah|now|next|then|second|finally)"
    r"[,.!]?\s+",
    re.IGNORECASE,
)
_ARITHMETIC = re.compile(r"\d\s*(?:[-+*/×÷^]|\\times|\\cdot)\s*[\d(]|=\s*-?\d")
_PARAGRAPH_BREAK = re.compile(r"\r?\n[ \t]*\r?\n\s*")
_OPENING_CHARS = 120


@dataclass
class Step:
    index: int
    start: int  # character offsets of the step's text in the thinking
    end: int
    text: str
    label: str
    cue: str | None  # the phrase that decided the label, as written in the text


def segment_thinking(text: str) -> list[Step]:
    """Paragraphs of the thinking, each labelled from the cue phrase that opens it."""
    steps: list[Step] = []
    for start, end in _paragraph_spans(text):
        body = text[start:end]
        label, cue = label_step(body)
        steps.append(Step(len(steps), start, end, body, label, cue))
    return steps


def _paragraph_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for brk in _PARAGRAPH_BREAK.finditer(text):
        spans.append((start, brk.start()))
        start = brk.end()
    spans.append((start, len(text)))
    return [_strip_span(text, s, e) for s, e in spans if text[s:e].strip()]


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    body = text[start:end]
    return start + len(body) - len(body.lstrip()), start + len(body.rstrip())


def label_step(body: str) -> tuple[str, str | None]:
    """(label, cue) of one step: cues in its opening sentence, else arithmetic, else reason."""
    opening = _opening(body)
    lowered = opening.lower()
    starts = _starts_after_filler(lowered)
    for label, cues in CUES.items():
        for cue in cues:
            pos = _cue_position(lowered, starts, cue, label)
            if pos is not None:
                return label, opening[pos : pos + len(cue)].strip(" ,")
    if _ARITHMETIC.search(body):
        return "compute", None
    return "reason", None


def _opening(body: str) -> str:
    """The first sentence, capped: a cue deep inside a paragraph says little about the step."""
    end = re.search(r"[.!?:](?:\s|$)|\n", body[:_OPENING_CHARS])
    return body[: end.end() if end else _OPENING_CHARS]


def _starts_after_filler(lowered: str) -> list[int]:
    """Where the step may really start: 0, then after each opening filler word, so that
    "Hmm, so that's 7" is found by the cue "so that's" as well as "Hmm, wait" by "wait"."""
    starts = [0]
    while match := _FILLER_WORD.match(lowered, starts[-1]):
        starts.append(match.end())
    return starts


def _cue_position(lowered: str, starts: list[int], cue: str, label: str) -> int | None:
    # Plans, backtracks and conclusions are told by how a step opens; checks and
    # alternatives ("so let me double-check") may come after a few words.
    at_start, anywhere = _cue_patterns(cue)
    for start in starts:
        if at_start.match(lowered, start):
            return start
    if label in ("verify", "explore", "compute"):
        match = anywhere.search(lowered)
        return match.start() if match else None
    return None


@cache
def _cue_patterns(cue: str) -> tuple[re.Pattern, re.Pattern]:
    """The cue matched where a step starts, and anywhere at a word boundary."""
    pattern = re.escape(cue) + (r"\b" if cue[-1].isalnum() else "")
    return re.compile(pattern), re.compile(r"\b" + pattern)


def answer_candidates(answer: str) -> list[str]:
    """What the answer states, most specific first: boxed values, bold ones, its last number."""
    boxed = _boxed_values(answer)
    bold = [b for b in re.findall(r"\*\*([^*\n]{1,40})\*\*", answer) if len(b.strip()) <= 40]
    numbers = re.findall(r"-?\d+(?:[.,/]\d+)*", answer)
    candidates = boxed + [b.strip().rstrip(".") for b in bold] + numbers[-1:]
    if not candidates and 0 < len(answer.strip()) <= 40:
        candidates.append(answer.strip().rstrip("."))
    return [c for c in dict.fromkeys(c.strip() for c in candidates) if c]


def _boxed_values(text: str) -> list[str]:
    values = []
    for match in re.finditer(r"\\boxed\{", text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            values.append(text[match.end() : i - 1])
    return values


def find_answer_in_thinking(thinking: str, answer: str) -> int | None:
    """Character offset where the final answer is first written in the thinking, or None."""
    for candidate in answer_candidates(answer):
        pattern = re.escape(candidate)
        if candidate[:1].isalnum() or candidate[:1] == "-":
            pattern = r"(?<![\w.])" + pattern
        if candidate[-1:].isalnum():
            pattern += r"(?![\w]|\.\d)"
        match = re.search(pattern, thinking)
        if match:
            return match.start()
    return None


def token_index_at(token_texts: list[str], offset: int) -> int:
    """Index of the token that holds character `offset` of "".join(token_texts)."""
    return _token_index(list(accumulate(map(len, token_texts))), offset)


def _token_index(token_ends: list[int], offset: int) -> int:
    """`token_index_at` over the tokens' end offsets (a binary search)."""
    return min(bisect_right(token_ends, offset), max(len(token_ends) - 1, 0))


def analyse(thinking: str | None = None, answer: str = "", tokens: list[str] | None = None) -> dict:
    """Steps, answer position and, when tokens are given, each step's token range."""
    text = "".join(tokens) if tokens is not None else (thinking or "")
    steps = [asdict(s) for s in segment_thinking(text)]
    answer_at = find_answer_in_thinking(text, answer) if answer else None
    result = {"steps": steps, "answer_at": answer_at, "answer_token": None, "answer_step": None}
    if answer_at is not None:
        result["answer_step"] = next(s["index"] for s in steps if answer_at < s["end"])
    if tokens is not None:
        _add_token_ranges(steps, tokens)
        if answer_at is not None:
            result["answer_token"] = token_index_at(tokens, answer_at)
    return result


def _add_token_ranges(steps: list[dict], tokens: list[str]) -> None:
    """Give each step a token range; the ranges tile the tokens, so every token is shown once
    (the token that carries a paragraph break goes with the step it opens)."""
    ends = list(accumulate(map(len, tokens)))
    bounds = [0] + [_token_index(ends, s["start"]) for s in steps[1:]] + [len(tokens)]
    for step, start, end in zip(steps, bounds, bounds[1:], strict=False):
        step["token_start"], step["token_end"] = start, max(start, end)
