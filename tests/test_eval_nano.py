"""qthink eval on qthink-nano behind a real `qthink serve`: math, multiple choice and tool calls
score what qthink's own quality evaluation (benchmarks/nano_quality.py) measures."""

import json
import random
import subprocess
import sys

import pytest

from tests.helpers.server import free_port, serve_subprocess, wait_healthy

N = 12


def nano_items() -> dict[str, list[dict]]:
    """The held-out problems qthink.nano.evaluate draws for n=N, in the eval JSONL schema."""
    from qthink.eval.extract import last_boxed
    from qthink.nano.data import TOOLS, arithmetic, multiple_choice, tool_use
    from qthink.nano.evaluate import HELD_OUT_SEED

    rng = random.Random(HELD_OUT_SEED)
    math = [arithmetic(rng) for _ in range(N)]
    choice = [multiple_choice(rng) for _ in range(N)]
    calls = [tool_use(rng)[0] for _ in range(N)]
    return {
        "nano-math": [
            {"id": i, "kind": "math", "prompt": m[0]["content"], "answer": last_boxed(m[-1]["content"])}
            for i, m in enumerate(math)
        ],
        "nano-choice": [
            {
                "id": i,
                "kind": "choice",
                "prompt": c[0]["content"],
                "answer": json.loads(c[-1]["content"])["answer"],
            }
            for i, c in enumerate(choice)
        ],
        "nano-tools": [
            {
                "id": i,
                "kind": "function",
                "category": "simple",
                "messages": t[:-1],
                "tools": TOOLS,
                "ground_truth": [expected_call(t[-1]["tool_calls"][0]["function"])],
            }
            for i, t in enumerate(calls)
        ],
    }


def expected_call(function: dict) -> dict:
    """BFCL's possible-answer shape: each argument with its one allowed value."""
    return {function["name"]: {k: [v] for k, v in function["arguments"].items()}}


@pytest.fixture(scope="module")
def nano_dir():
    from qthink.nano.build import ARTIFACT

    if not ARTIFACT.is_file():
        pytest.skip("the qthink-nano weights (qthink/nano/nano.safetensors) are not built")
    from qthink.demo import default_model_path

    return default_model_path()


def test_eval_on_nano_matches_its_quality_evaluation(nano_dir, tmp_path):
    from qthink.nano.evaluate import evaluate

    files = []
    for name, items in nano_items().items():
        files.append(tmp_path / f"{name}.jsonl")
        files[-1].write_text("".join(json.dumps(item) + "\n" for item in items))
    port = free_port()
    proc = serve_subprocess(nano_dir, port, (tmp_path / "serve.log").open("w"), max_model_len=1024)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}")
        cmd = [sys.executable, "-m", "qthink", "eval", "run", *map(str, files), "--temperature", "0"]
        cmd += ["--base-url", f"http://127.0.0.1:{port}/v1", "--max-tokens", "300", "--no-progress"]
        cmd += ["--output", str(tmp_path / "nano.jsonl")]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    finally:
        proc.kill()
        proc.wait()
    assert result.returncode == 0, result.stderr
    tasks = json.loads((tmp_path / "nano.json").read_text())["tasks"]
    scores = {name: task["metrics"]["avg@1"]["score"] for name, task in tasks.items()}
    reference = evaluate(nano_dir, n=N)
    # the eval's scorers are at least as lenient as the quality evaluation's exact matches;
    # batching may flip one greedy tie
    tolerance = 1 / N + 1e-9
    assert scores["nano-math"] >= reference["arithmetic_boxed_correct"] - tolerance
    assert scores["nano-choice"] >= reference["multiple_choice_json_correct"] - tolerance
    assert scores["nano-tools"] >= reference["tool_call_correct"] - tolerance
    # the shipped model scores 1.0 on both over 50 held-out problems: a regression guard
    assert scores["nano-math"] >= 0.9 and scores["nano-tools"] >= 0.9
