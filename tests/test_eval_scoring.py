"""qthink eval: answer extraction and scoring for math, choices, function calls and code."""

import json
import socket

import pytest

from qthink.eval import bfcl
from qthink.eval.code_exec import Limits, run_tests
from qthink.eval.extract import boxed_answers, choice_letter, last_boxed, math_answer, program
from qthink.eval.function_score import calls_error, standardize
from qthink.eval.math_score import math_equal
from qthink.eval.metrics import bootstrap, majority, pass_at_k, wilson
from qthink.eval.tasks import Reply, TaskError, examples, gold, load_task, messages, score, tools
from qthink.sandbox.jail import jail_problem


def test_boxed_keeps_nested_braces_whole():
    assert boxed_answers(r"so \boxed{\frac{a^{2}}{b_{1}}} done") == [r"\frac{a^{2}}{b_{1}}"]


def test_boxed_escaped_braces_are_literal():
    assert boxed_answers(r"the set \boxed{\{1, 2\}}.") == [r"\{1, 2\}"]


def test_last_boxed_wins():
    assert last_boxed(r"first \boxed{3}, no wait: \boxed{4}") == "4"


def test_unclosed_box_is_no_answer():
    assert last_boxed(r"\boxed{\frac{1}{2}") is None


def test_math_answer_prefers_the_answer_and_marks_a_thinking_fallback():
    assert math_answer(r"\boxed{7}", r"\boxed{6}") == ("7", "answer")
    assert math_answer("I think it is seven.", r"so \boxed{7}") == ("7", "thinking")
    assert math_answer("seven", "no box at all") == (None, "none")


@pytest.mark.parametrize(
    ("predicted", "gold_answer"),
    [
        (r"\frac{1}{2}", "0.5"),
        ("1/2", r"\frac{1}{2}"),
        ("0.5", "1/2"),
        (r"\dfrac{\sqrt{2}}{2}", r"\sqrt{2}/2"),
    ],
)
def test_equivalent_math_answers_agree(predicted, gold_answer):
    assert math_equal(predicted, gold_answer)


@pytest.mark.parametrize(
    ("predicted", "gold_answer"), [("0.49", r"\frac{1}{2}"), (None, "3"), ("(3, 2)", "(2, 3)")]
)
def test_different_math_answers_do_not(predicted, gold_answer):
    assert not math_equal(predicted, gold_answer)


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ('{"answer": "C"}', "C"),
        ('Here you go:\n```json\n{"answer": "B"}\n```', "B"),
        ('```\n{"answer": "(D)"}\n```', "D"),
        ("Answer: C", "C"),
        ("After checking, the answer is (B).", "B"),
        ("**Answer:** A", "A"),
        ('{"note": 1} then {"answer": "E"}', "E"),
        ("the answer a careful reader picks is D", None),
        ("no idea", None),
    ],
)
def test_choice_letter(text, letter):
    assert choice_letter(text) == letter


def test_choice_letter_ignores_letters_beyond_the_options():
    assert choice_letter('{"answer": "F"}', letters="ABCD") is None


def test_program_takes_the_last_python_block():
    text = "Try:\n```python\nprint(1)\n```\nBetter:\n```python\nprint(2)\n```\n```text\nout\n```"
    assert program(text).strip() == "print(2)"
    assert program("no code") is None


def test_choice_shuffle_is_seeded_and_keeps_the_gold_letter_on_the_right_option():
    item = {
        "id": "q",
        "kind": "choice",
        "question": "?",
        "choices": list("wxyz"),
        "answer": "B",
        "shuffle": True,
    }
    orders = {}
    for seed in range(8):
        text = messages(item, seed)[0]["content"]
        letter = gold(item, seed)
        assert f"{letter}) x" in text
        assert messages(item, seed) == messages(item, seed)
        orders[seed] = text
    assert len(set(orders.values())) > 1
    assert score(item, Reply(f'{{"answer": "{gold(item, 3)}"}}', None, []), 3)["correct"]


def test_unshuffled_choices_keep_their_order():
    item = {"id": "q", "kind": "choice", "question": "?", "choices": list("wxyz"), "answer": "D"}
    assert "A) w\nB) x\nC) y\nD) z" in messages(item, 5)[0]["content"]
    assert gold(item, 5) == "D"


TRIANGLE = {
    "name": "geometry.triangle_area",
    "parameters": {
        "type": "dict",
        "properties": {
            "base": {"type": "integer"},
            "height": {"type": "float"},
            "unit": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["base", "height"],
    },
}
TRUTH = [
    {"geometry.triangle_area": {"base": [10], "height": [5.0], "unit": ["cm", ""], "tags": [["a b"], ""]}}
]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"base": 10, "height": 5.0}, None),
        ({"base": 10, "height": 5}, None),  # an int passes for a float
        ({"base": 10, "height": 5.0, "unit": " CM"}, None),  # case and spaces do not matter
        ({"base": 10, "height": 5.0, "tags": ["A-B"]}, None),
        ({"base": 10}, "missing required parameter 'height'"),
        ({"base": 10.0, "height": 5.0}, "wrong type for 'base'"),
        ({"base": "10", "height": 5.0}, "wrong type for 'base'"),
        ({"base": 11, "height": 5.0}, "value 11"),
        ({"base": 10, "height": 5.0, "unit": "inch"}, "value 'inch'"),
        ({"base": 10, "height": 5.0, "colour": "red"}, "unexpected parameter 'colour'"),
    ],
)
def test_simple_call_rules(args, problem):
    error = calls_error([TRIANGLE], [{"geometry.triangle_area": args}], TRUTH, "simple")
    assert (error is None) if problem is None else (problem in error)


def test_optional_ground_truth_param_without_empty_marker_is_required():
    truth = [{"geometry.triangle_area": {"base": [10], "height": [5.0], "unit": ["cm"]}}]
    error = calls_error(
        [TRIANGLE], [{"geometry.triangle_area": {"base": 10, "height": 5.0}}], truth, "simple"
    )
    assert "missing parameter 'unit'" in error


def test_wrong_function_name():
    error = calls_error([TRIANGLE], [{"area": {"base": 10, "height": 5.0}}], TRUTH, "simple")
    assert "expected a call to geometry.triangle_area" in error


def test_parallel_calls_match_in_any_order_but_exactly_once():
    truth = [
        {"geometry.triangle_area": {"base": [1], "height": [2.0]}},
        {"geometry.triangle_area": {"base": [3], "height": [4.0]}},
    ]
    call = lambda b, h: {"geometry.triangle_area": {"base": b, "height": h}}
    assert calls_error([TRIANGLE], [call(3, 4.0), call(1, 2.0)], truth, "parallel") is None
    assert calls_error([TRIANGLE], [call(1, 2.0), call(1, 2.0)], truth, "parallel") is not None
    assert "1 call(s), expected 2" in calls_error([TRIANGLE], [call(1, 2.0)], truth, "parallel")


def test_irrelevance_wants_no_call():
    assert calls_error([TRIANGLE], [], [], "irrelevance") is None
    assert calls_error(
        [TRIANGLE], [{"geometry.triangle_area": {"base": 1, "height": 1.0}}], [], "irrelevance"
    )


def test_dict_and_list_of_dict_params():
    spec = {
        "name": "book",
        "parameters": {
            "type": "dict",
            "properties": {"room": {"type": "dict"}, "guests": {"type": "array", "items": {"type": "dict"}}},
            "required": ["room"],
        },
    }
    truth = [
        {"book": {"room": [{"kind": ["Double"], "view": ["sea", ""]}], "guests": [[{"name": ["Ann"]}], ""]}}
    ]
    ok = {"room": {"kind": "double"}, "guests": [{"name": "ann"}]}
    assert calls_error([spec], [{"book": ok}], truth, "simple") is None
    assert calls_error([spec], [{"book": {"room": {"kind": "single"}}}], truth, "simple")
    assert calls_error([spec], [{"book": {"room": {"kind": "double", "floor": 2}}}], truth, "simple")


def test_standardize_matches_bfcl_string_rule():
    assert standardize("April 1, 2024") == standardize("april-1 2024") == "april12024"


def test_function_items_send_openai_names_and_map_them_back():
    item = {
        "id": "t",
        "kind": "function",
        "prompt": "area?",
        "functions": [TRIANGLE],
        "ground_truth": [{"geometry.triangle_area": {"base": [10], "height": [5.0]}}],
        "category": "simple",
    }
    sent = tools(item)[0]["function"]
    assert sent["name"] == "geometry_triangle_area"
    assert sent["parameters"]["type"] == "object"
    assert sent["parameters"]["properties"]["height"]["type"] == "number"
    reply = Reply(None, None, [{"name": "geometry_triangle_area", "arguments": {"base": 10, "height": 5}}])
    assert score(item, reply, 0)["correct"]


def test_bfcl_data_loads_offline_from_the_package():
    items = bfcl.load_category("simple")
    assert len(items) > 100 and items[0]["kind"] == "function" and items[0]["ground_truth"]
    assert all(i["category"] == "irrelevance" for i in bfcl.load_category("irrelevance"))
    parallel = bfcl.load_category("parallel")
    assert all(len(i["ground_truth"]) >= 2 for i in parallel)


def test_bfcl_loader_reads_a_folder_in_bfcl_format(tmp_path):
    (tmp_path / "possible_answer").mkdir()
    question = {
        "id": "simple_python_0",
        "question": [[{"role": "user", "content": "area"}]],
        "function": [TRIANGLE],
    }
    answer = {"id": "simple_python_0", "ground_truth": TRUTH}
    (tmp_path / "BFCL_v4_simple_python.json").write_text(json.dumps(question) + "\n")
    (tmp_path / "possible_answer" / "BFCL_v4_simple_python.json").write_text(json.dumps(answer))
    (item,) = bfcl.load_category("simple_python", tmp_path)
    assert item["messages"] == [{"role": "user", "content": "area"}] and item["ground_truth"] == TRUTH
    with pytest.raises(FileNotFoundError, match="multiple"):
        bfcl.load_category("multiple", tmp_path)
    with pytest.raises(ValueError, match="unsupported"):
        bfcl.load_category("simple_java", tmp_path)


def test_code_passes_and_fails_for_the_right_reasons():
    tests = [{"input": "2 3\n", "output": "5\n"}, {"input": "10 -1\n", "output": "9"}]
    assert run_tests("a, b = map(int, input().split())\nprint(a + b)", tests).passed
    assert run_tests("print(5)", tests).reason == "wrong answer"
    assert run_tests("raise SystemExit(3)", tests).reason.startswith("runtime error")
    fast = Limits(seconds=1)
    assert run_tests("while True:\n    pass", tests, limits=fast).reason == "timeout"
    assert "MemoryError" in run_tests("x = bytearray(3 << 30)", tests, limits=Limits(memory_mb=256)).reason


def test_code_runs_in_an_empty_folder_with_a_bare_environment():
    # Python may add LC_CTYPE (locale coercion), the jail PWD; nothing of the caller's environment leaks
    allowed = {"PATH", "PYTHONHASHSEED", "LC_CTYPE", "PWD"}
    source = f"import os\nprint(os.listdir('.'), set(os.environ) <= {allowed!r})"
    assert run_tests(source, [{"input": "", "output": "['main.py'] True"}]).passed


def test_programs_run_in_the_jail(tmp_path):
    if jail_problem():
        pytest.skip(jail_problem())
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    outside = tmp_path / "planted.txt"
    source = (
        "import socket\n"
        f"try:\n    open({str(outside)!r}, 'w').write('x')\n"
        "except OSError as e:\n    print(type(e).__name__)\n"
        f"try:\n    socket.create_connection(('127.0.0.1', {listener.getsockname()[1]}), timeout=2)\n"
        "except OSError as e:\n    print(type(e).__name__)"
    )
    try:
        result = run_tests(source, [{"input": "", "output": "FileNotFoundError\nConnectionRefusedError"}])
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
    assert result.passed, result.reason
    assert not outside.exists()


def test_functional_code_calls_the_solution_method():
    source = "class Solution:\n    def twice(self, xs, k):\n        return [x * k for x in xs]"
    assert run_tests(source, [{"input": "[1, 2]\n3", "output": "[3, 6]"}], fn_name="twice").passed


def test_code_item_scores_the_program_in_the_answer():
    item = load_task("code-example").items[0]
    good = Reply("```python\na, b = map(int, input().split())\nprint(a + b)\n```", "think", [])
    assert score(item, good, 0)["correct"]
    assert score(item, Reply("no code", None, []), 0)["error"] == "no program in the answer"


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)


def test_majority_groups_equal_answers():
    assert majority(["1/2", "3", "0.5", "3", None, r"\frac{1}{2}"], math_equal) == "1/2"
    assert majority([None, None]) is None


def test_intervals():
    low, high = wilson(0, 10)
    assert low == 0.0 and 0.2 < high < 0.35
    low, high = bootstrap([0.25, 0.5, 0.75, 1.0])
    assert 0.25 <= low < 0.625 < high <= 1.0


def test_example_sets_load_and_their_golds_score_correct():
    assert {"math-example", "choice-example", "function-example", "code-example"} <= set(examples())
    for item in load_task("math-example").items:
        assert score(item, Reply(rf"\boxed{{{item['answer']}}}", None, []), 0)["correct"]
    for item in load_task("choice-example").items:
        assert score(item, Reply(f'{{"answer": "{gold(item, 1)}"}}', None, []), 1)["correct"]


def test_bad_task_sources_say_what_is_wrong(tmp_path):
    with pytest.raises(TaskError, match="no task"):
        load_task(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "kind": "poetry", "prompt": "x"}\n')
    with pytest.raises(TaskError, match="kind must be"):
        load_task(str(bad))
    bad.write_text('{"id": 1, "kind": "math", "prompt": "x", "answer": "1"}\n{oops\n')
    with pytest.raises(TaskError, match="bad.jsonl:2"):
        load_task(str(bad))
