"""Evaluation items as JSONL data, how each kind is asked, and how each answer is scored.

A task is a JSONL file, one item per line. Every item has:

    id        str, unique within the file
    kind      "math" | "choice" | "function" | "code"
    prompt    str, the user message, sent as it is            } one of the two
    messages  [{"role", "content"}, ...], a whole conversation }

and, by kind:

    math      answer: str, the gold answer (LaTeX or plain; compared with math-verify).
              The model's answer is its last \\boxed{} in the answer, else in the thinking
              (the record then says "source": "thinking").
    choice    answer: str, the letter of the correct option. Either the prompt already lists
              the options, or give question: str and choices: [str, ...] and qthink renders
              them as A) B) ... with the instruction to reply {"answer": "X"}; with
              "shuffle": true the options are shuffled, seeded by the run seed and the id.
    function  functions: [BFCL function docs] (or tools: [OpenAI tools]), ground_truth:
              [{name: {param: [allowed values]}}, ...] in BFCL's possible-answer format
              ("" among the values marks an optional param), category: "simple" |
              "multiple" | "parallel" | "parallel_multiple" | "irrelevance" (no call wanted).
    code      tests: [{"input": stdin, "output": expected stdout}, ...]; optional fn_name
              (LeetCode-style: each input line is one JSON argument to Solution().fn_name),
              time_limit (seconds per test, default 6), memory_limit_mb (default 1024).

Sources: a path to a .jsonl file, a bundled example set by name (see `examples()`),
`bfcl:CATEGORY` (BFCL's own data from the bfcl-eval package, offline) or `hf:NAME` (a
Hugging Face dataset, online; see qthink.eval.hub).
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

from qthink.eval import bfcl
from qthink.eval.code_exec import Limits, run_tests
from qthink.eval.extract import choice_letter, math_answer, program
from qthink.eval.function_score import calls_error
from qthink.eval.hub import load_hub
from qthink.eval.math_score import math_equal
from qthink.eval.task import Task, TaskError

DATA = Path(__file__).parent / "data"
KINDS = ("math", "choice", "function", "code")
LETTERS = "ABCDEFGHIJKLMNOP"
CHOICE_INSTRUCTION = (
    'Please show your choice in the `answer` field with only the choice letter, e.g., "answer": "C".'
)
# Long outputs are the norm for competition math and code (the model card's 81,920 tokens).
LONG_OUTPUT_KINDS = ("math", "code")


@dataclass
class Reply:
    """What the endpoint returned for one sample."""

    content: str | None
    reasoning: str | None
    tool_calls: list[dict]  # [{"name": str, "arguments": dict}]
    finish_reason: str | None = None


def examples() -> list[str]:
    """Names of the small example sets shipped with qthink."""
    return sorted(p.stem for p in DATA.glob("*.jsonl"))


def read_jsonl(path: Path) -> list[dict]:
    items = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{number}: not JSON ({e.msg})") from None
    return items


def validate(items: list[dict], source: str) -> list[dict]:
    seen = set()
    for item in items:
        where = f"{source}: item {item.get('id')!r}"
        if item.get("kind") not in KINDS:
            raise TaskError(f"{where}: kind must be one of {', '.join(KINDS)}")
        if "id" not in item or item["id"] in seen:
            raise TaskError(f"{where}: every item needs a unique id")
        if not ("prompt" in item or "messages" in item or "question" in item):
            raise TaskError(f"{where}: needs prompt, messages or question")
        seen.add(item["id"])
    return items


def load_task(source: str) -> Task:
    """A task from a JSONL path, a bundled example name, `bfcl:CATEGORY` or `hf:NAME`."""
    if source.startswith("bfcl:"):
        category = source.split(":", 1)[1]
        return Task(f"bfcl_{category}", bfcl.load_category(category))
    if source.startswith("hf:"):
        return load_hub(source.split(":", 1)[1])
    path = Path(source)
    if not path.is_file() and (DATA / f"{source}.jsonl").is_file():
        path = DATA / f"{source}.jsonl"
    if not path.is_file():
        raise TaskError(f"no task {source!r}: not a file, and not one of {', '.join(examples())}")
    return Task(path.stem, validate(read_jsonl(path), str(path)))


def shuffled_choices(item: dict, seed: int) -> tuple[list[str], str]:
    """(options in the order shown, the correct letter there); seeded by run seed and item id."""
    choices, correct = list(item["choices"]), item["choices"][LETTERS.index(item["answer"])]
    if item.get("shuffle"):
        random.Random(f"{seed}:{item['id']}").shuffle(choices)
    return choices, LETTERS[choices.index(correct)]


def gold(item: dict, seed: int):
    """The reference answer as this run asks the item (choice letters follow the shuffle)."""
    if item["kind"] == "choice" and "choices" in item:
        return shuffled_choices(item, seed)[1]
    return item.get("answer", item.get("ground_truth"))


def messages(item: dict, seed: int) -> list[dict]:
    """The conversation sent for an item."""
    if "messages" in item:
        return item["messages"]
    if item["kind"] == "choice" and "choices" in item:
        choices, _ = shuffled_choices(item, seed)
        options = "\n".join(f"{LETTERS[i]}) {text}" for i, text in enumerate(choices))
        return [{"role": "user", "content": f"{item['question']}\n\n{options}\n\n{CHOICE_INSTRUCTION}"}]
    return [{"role": "user", "content": item["prompt"]}]


def _wire_name(name: str) -> str:
    # OpenAI function names allow [a-zA-Z0-9_-] only; BFCL's own OpenAI runs rename the same way
    return name.replace(".", "_")


def tools(item: dict) -> list[dict] | None:
    """The tools offered with a function item, in OpenAI's shape."""
    if item["kind"] != "function":
        return None
    if "tools" in item:
        return item["tools"]
    return [
        {
            "type": "function",
            "function": {
                "name": _wire_name(f["name"]),
                "description": f.get("description", ""),
                "parameters": bfcl.openai_schema(f.get("parameters", {"type": "object", "properties": {}})),
            },
        }
        for f in item["functions"]
    ]


def _functions(item: dict) -> list[dict]:
    return item.get("functions") or [t["function"] for t in item.get("tools", [])]


def score(item: dict, reply: Reply, seed: int) -> dict:
    """{"correct": bool, "extracted": the answer as read, ...}: one sample's verdict."""
    kind = item["kind"]
    if kind == "math":
        answer, found_in = math_answer(reply.content, reply.reasoning)
        return {"correct": math_equal(answer, str(item["answer"])), "extracted": answer, "source": found_in}
    if kind == "choice":
        letter = choice_letter(reply.content)
        return {"correct": letter == gold(item, seed), "extracted": letter}
    if kind == "function":
        original = {_wire_name(f["name"]): f["name"] for f in _functions(item)}
        calls = [{original.get(c["name"], c["name"]): c["arguments"]} for c in reply.tool_calls]
        error = calls_error(
            _functions(item), calls, item.get("ground_truth", []), item.get("category", "simple")
        )
        return {"correct": error is None, "extracted": calls, "error": error}
    source = program(reply.content)
    if source is None:
        return {"correct": False, "extracted": None, "error": "no program in the answer"}
    limits = Limits(seconds=item.get("time_limit", 6.0), memory_mb=item.get("memory_limit_mb", 1024))
    result = run_tests(source, item["tests"], item.get("fn_name"), limits)
    return {"correct": result.passed, "extracted": source, "error": None if result.passed else result.reason}


def vote_key(item: dict, extracted):
    """What majority voting compares; None for kinds where a vote means nothing (code)."""
    if extracted is None or item["kind"] == "code":
        return None
    return json.dumps(extracted, sort_keys=True) if item["kind"] == "function" else extracted


def vote_correct(item: dict, winner, seed: int) -> bool:
    """Whether the majority answer is right, judged as a single sample's answer would be."""
    kind = item["kind"]
    if kind == "math":
        return math_equal(winner, str(item["answer"]))
    if kind == "choice":
        return winner == gold(item, seed)
    calls = json.loads(winner)
    error = calls_error(_functions(item), calls, item.get("ground_truth", []), item.get("category", "simple"))
    return error is None
