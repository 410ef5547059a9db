"""Pull the final answer out of a model's text: \\boxed{}, a multiple-choice letter, a program."""

import json
import re

FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
LETTER_PATTERNS = [
    re.compile(r"answer\s*(?:is|:)?\s*[:\s]*\**\s*\(?\s*((?-i:[A-J]))\b", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-J])\)?\s*[.)]?\s*$", re.MULTILINE),
    re.compile(r"\\boxed\{\s*(?:\\text\{)?\s*\(?([A-J])\)?\s*\}?\s*\}"),
]


def boxed_answers(text: str | None) -> list[str]:
    """Every `\\boxed{...}` (or `\\fbox{...}`) body in order, with nested braces kept whole."""
    found, text = [], text or ""
    for start in (m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)):
        depth, i = 1, start
        while i < len(text) and depth:
            # an escaped brace (`\{`) is a literal set brace, not a group
            step = 2 if text[i] == "\\" else 1
            depth += {"{": 1, "}": -1}.get(text[i], 0) if step == 1 else 0
            i += step
        if depth == 0:
            found.append(text[start : i - 1].strip())
    return found


def last_boxed(text: str | None) -> str | None:
    """The final boxed answer: a model that revises itself boxes its last word last."""
    found = boxed_answers(text)
    return found[-1] if found else None


def math_answer(content: str | None, reasoning: str | None) -> tuple[str | None, str]:
    """(answer, where it came from): the answer's last box, else the thinking's, marked as such."""
    if (boxed := last_boxed(content)) is not None:
        return boxed, "answer"
    if (boxed := last_boxed(reasoning)) is not None:
        return boxed, "thinking"
    return None, "none"


def _json_objects(text: str) -> list[dict]:
    """JSON objects in the text: code-fenced blocks first, then any `{...}` span that parses."""
    candidates = [body for _, body in FENCE.findall(text)]
    candidates += re.findall(r"\{[^{}]*\}", text)
    objects = []
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            objects.append(value)
    return objects


def choice_letter(text: str | None, letters: str = "ABCDEFGHIJ") -> str | None:
    """The chosen option: `{"answer": "C"}` (also fenced), then "Answer: C" / "the answer is (C)"."""
    text = text or ""
    for obj in reversed(_json_objects(text)):
        value = str(obj.get("answer", "")).strip().strip("()").upper()
        if len(value) == 1 and value in letters:
            return value
    for pattern in LETTER_PATTERNS:
        hits = [h.upper() for h in pattern.findall(text) if h.upper() in letters]
        if hits:
            return hits[-1]
    return None


def program(text: str | None) -> str | None:
    """The program in the answer: the last Python (or untagged) fenced block, else the last block."""
    blocks = FENCE.findall(text or "")
    if not blocks:
        return None
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3", "")]
    return (python or [body for _, body in blocks])[-1]
