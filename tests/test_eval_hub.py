"""qthink eval's Hugging Face presets: rows become schema items; offline is a clear error."""

import base64
import json
import pickle
import zlib

import pytest

from qthink.eval import hub
from qthink.eval.tasks import Reply, TaskError, gold, load_task, messages, score, validate


def test_math_rows_become_boxed_math_items():
    (item,) = validate(hub._math([{"problem_idx": 3, "problem": "Find n.", "answer": 70}], "aime25"), "t")
    assert item["prompt"].startswith("Find n.") and "\\boxed{}" in item["prompt"]
    assert score(item, Reply(r"\boxed{70}", None, []), 0)["correct"]


def test_gpqa_rows_are_shuffled_choices_with_the_right_answer_tracked():
    row = {
        "Question": "Q?",
        "Correct Answer": "right",
        **{f"Incorrect Answer {k}": f"wrong{k}" for k in (1, 2, 3)},
    }
    (item,) = validate(hub._gpqa([row], "gpqa_diamond"), "t")
    letters = {gold(item, seed) for seed in range(12)}
    assert len(letters) > 1  # the right answer does not always sit at A
    assert all(f"{gold(item, s)}) right" in item_text(item, s) for s in range(12))


def item_text(item, seed):
    return messages(item, seed)[0]["content"]


def test_mmlu_pro_rows_keep_their_order():
    row = {"question_id": 7, "question": "Q?", "options": ["a", "b", "c"], "answer": "C"}
    (item,) = validate(hub._mmlu_pro([row], "mmlu_pro"), "t")
    assert gold(item, 0) == "C" and "C) c" in item_text(item, 0)


def _packed(tests: list[dict]) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def test_livecodebench_rows_join_public_and_private_tests():
    row = {
        "question_id": "abc123",
        "question_content": "Add two numbers.",
        "starter_code": "",
        "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
        "private_test_cases": _packed([{"input": "5 5\n", "output": "10\n", "testtype": "stdin"}]),
        "metadata": "{}",
    }
    (item,) = validate(hub._livecodebench([row], "livecodebench"), "t")
    assert len(item["tests"]) == 2 and "fn_name" not in item
    program = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    assert score(item, Reply(program, None, []), 0)["correct"]


def test_livecodebench_refuses_pickled_objects():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    blob = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(TaskError, match="refusing to unpickle"):
        hub._private_tests(blob)


def test_unknown_or_unreachable_hub_tasks_are_clear_errors(monkeypatch):
    with pytest.raises(TaskError, match="unknown Hugging Face task"):
        load_task("hf:not-a-benchmark")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(TaskError, match="datasets|Offline"):
        load_task("hf:aime25")
