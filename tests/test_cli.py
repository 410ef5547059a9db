"""The command line, as a user runs it: help, generate, chat, plan."""

import subprocess
import sys

import pytest

from qthink.random_checkpoint import QWEN3_4B_CONFIG, write_checkpoint


def qthink(*args, stdin: str | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qthink", *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_every_command():
    out = qthink("--help").stdout
    for command in ("serve", "chat", "generate", "agent", "eval", "bench", "plan", "view", "nano"):
        assert command in out
    assert "--max-thinking-tokens" in qthink("generate", "--help").stdout


@pytest.fixture(scope="module")
def model(make_checkpoint):
    return make_checkpoint(seed=7, tie_word_embeddings=False)  # a tied random model only repeats "\n"


def test_generate_sets_thinking_apart(model):
    r = qthink(
        "generate",
        "--model",
        str(model),
        "--max-tokens",
        "40",
        "--max-thinking-tokens",
        "4",
        "--temperature",
        "0",
        "What is 2+2?",
    )
    assert r.returncode == 0, r.stderr
    assert "── thinking ──" in r.stdout and r.stdout.index("── thinking ──") < r.stdout.index("── answer ──")
    assert "Considering the limited time" in r.stdout


def test_chat_keeps_answers_and_continues(model):
    r = qthink(
        "chat", "--model", str(model), "--max-tokens", "6", "--temperature", "0", stdin="hello\nand again\n\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("── thinking ──") == 2
    assert r.stdout.count("(stopped at max_tokens)") == 2


def test_chat_over_the_context_says_so_and_goes_on(model):
    long = "word " * 400
    r = qthink(
        "chat",
        "--model",
        str(model),
        "--max-model-len",
        "256",
        "--max-tokens",
        "4",
        "--temperature",
        "0",
        stdin=f"{long}\nhello\n\n",
    )
    assert r.returncode == 0, r.stderr
    assert "shorten the prompt" in r.stdout and "/reset starts a new chat" in r.stdout
    assert r.stdout.count("── thinking ──") == 1


def test_bad_model_path_is_one_line():
    r = qthink("generate", "--model", "/no/such/model", "hi")
    assert r.returncode != 0
    assert "not a model folder" in r.stderr.strip().splitlines()[-1]


def test_plan_refuses_what_cannot_fit(tmp_path):
    write_checkpoint(tmp_path, dict(QWEN3_4B_CONFIG), {}, chat_template=None)
    fits = qthink(
        "plan", str(tmp_path), "--quantization", "int4", "--kv-cache-dtype", "int8", "--memory", "24"
    )
    assert fits.returncode == 0 and "fits" in fits.stdout
    too_big = qthink("plan", str(tmp_path), "--memory", "24")
    assert too_big.returncode == 1 and "DOES NOT FIT" in too_big.stdout
    smaller_groups = qthink(
        "plan", str(tmp_path), "--quantization", "int4", "--quantization-group-size", "32", "--memory", "24"
    )
    weights = [float(r.stdout.split("weights")[1].split()[0]) for r in (fits, smaller_groups)]
    assert weights[1] > weights[0]  # more groups: more scales and offsets


def test_default_model_is_named_and_its_loading_bar_completes():
    r = qthink("chat", stdin="\n")
    assert r.returncode == 0, r.stderr
    assert "qthink chat — qthink-nano." in r.stdout
    assert "loading weights: 100%" in r.stderr and "loading weights:   0%" not in r.stderr.splitlines()[-1]


def test_loading_a_model_does_not_pull_in_the_compiler_stack(model):
    """Building the model on the meta device must not route RoPE through torch's reference ops,
    which import torch._dynamo and sympy: a second of start-up for every command."""
    code = (
        "import sys; from pathlib import Path; from qthink.loader import load_model; "
        f"load_model(Path({str(model)!r}), 'float32'); "
        "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
