"""Benchmarks by Hugging Face `datasets` name (online): AIME, HMMT, GPQA, MMLU-Pro, LiveCodeBench."""

import base64
import io
import json
import pickle
import zlib

from qthink.eval.task import Task, TaskError

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = (
    "Write a Python program that reads the input from stdin and writes the answer to stdout. "
    "Give the whole program in one ```python code block."
)
FUNCTION_INSTRUCTION = (
    "Complete the method of the starter code below and give the whole class in one ```python code block."
)


def _math(rows, name: str) -> list[dict]:
    return [
        {
            "id": str(row.get("id", row.get("problem_idx", i))),
            "kind": "math",
            "prompt": f"{row['problem']}\n\n{MATH_INSTRUCTION}",
            "answer": str(row["answer"]),
        }
        for i, row in enumerate(rows)
    ]


def _mmlu_pro(rows, name: str) -> list[dict]:
    return [
        {
            "id": str(row["question_id"]),
            "kind": "choice",
            "question": row["question"],
            "choices": row["options"],
            "answer": row["answer"],
        }
        for row in rows
    ]


def _gpqa(rows, name: str) -> list[dict]:
    # GPQA lists the right answer first: shuffling is part of the benchmark
    return [
        {
            "id": str(row.get("Record ID", i)),
            "kind": "choice",
            "question": row["Question"].strip(),
            "choices": [row["Correct Answer"].strip()]
            + [row[f"Incorrect Answer {k}"].strip() for k in (1, 2, 3)],
            "answer": "A",
            "shuffle": True,
        }
        for i, row in enumerate(rows)
    ]


class _TextOnly(pickle.Unpickler):
    """LiveCodeBench pickles its private tests as a plain string; refuse anything else."""

    def find_class(self, module, name):
        raise TaskError(f"refusing to unpickle {module}.{name} from a dataset")


def _private_tests(blob: str) -> list[dict]:
    if not blob:
        return []
    raw = zlib.decompress(base64.b64decode(blob))
    return json.loads(_TextOnly(io.BytesIO(raw)).load())


def _livecodebench(rows, name: str) -> list[dict]:
    items = []
    for row in rows:
        tests = json.loads(row["public_test_cases"]) + _private_tests(row.get("private_test_cases", ""))
        metadata = json.loads(row.get("metadata") or "{}")
        functional = bool(tests) and tests[0].get("testtype") == "functional"
        instruction = (
            f"{FUNCTION_INSTRUCTION}\n\n```python\n{row['starter_code']}\n```"
            if functional
            else CODE_INSTRUCTION
        )
        item = {
            "id": row["question_id"],
            "kind": "code",
            "prompt": f"{row['question_content']}\n\n{instruction}",
            "tests": [{"input": t["input"], "output": t["output"]} for t in tests],
        }
        if functional:
            item["fn_name"] = metadata.get("func_name")
        items.append(item)
    return items


# name -> (dataset path, config, split, converter)
PRESETS = {
    "aime25": ("MathArena/aime_2025", None, "train", _math),
    "hmmt25": ("MathArena/hmmt_feb_2025", None, "train", _math),
    "aime24": ("HuggingFaceH4/aime_2024", None, "train", _math),
    "gpqa_diamond": ("Idavidrein/gpqa", "gpqa_diamond", "train", _gpqa),
    "mmlu_pro": ("TIGER-Lab/MMLU-Pro", None, "test", _mmlu_pro),
    # the parquet mirror of LiveCodeBench's release v6 window: the original needs a loading script
    "livecodebench": ("lighteval/code_generation_lite", "v6", "test", _livecodebench),
}


def load_hub(name: str) -> Task:
    """Download (or read from the HF cache) a preset benchmark as a task."""
    if name not in PRESETS:
        raise TaskError(f"unknown Hugging Face task {name!r}; choose from {', '.join(PRESETS)}")
    try:
        import datasets
    except ImportError:
        raise TaskError("hf: tasks need the `datasets` package: pip install datasets") from None
    path, config, split, convert = PRESETS[name]
    try:
        rows = datasets.load_dataset(path, config, split=split)
    except Exception as e:  # noqa: BLE001 - offline, gated or renamed: all end the same way for the user
        raise TaskError(
            f"could not load {path} ({type(e).__name__}: {e}). Offline? Use a local JSONL file instead "
            "(schema: docs/eval.md)"
        ) from None
    return Task(name, convert(rows, name))
