"""`qthink plan` offline from the shipped configs, with advice that says what does fit."""

import os
import re
import subprocess
import sys

import pytest

from qthink.config import ModelConfig
from qthink.known_models import known_config, known_names
from qthink.plan_cli import Format, largest_context, plan

README = [
    "Qwen/Qwen3-4B-Thinking-2507",
    "--max-model-len",
    "262144",
    "--quantization",
    "int4",
    "--kv-cache-dtype",
    "int8",
]


@pytest.fixture
def offline(tmp_path):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}


def plan_cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qthink", "plan", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_readme_example_plans_offline(offline):
    r = plan_cli(offline, *README, "--memory", "24")
    assert r.returncode == 0 and r.stdout.rstrip().endswith("fits"), r.stdout + r.stderr
    assert "from the published config shipped with qthink" in r.stdout
    assert "compared with 24.00 GiB: the 24 GiB given with --memory" in r.stdout


def test_without_memory_it_says_which_figure_it_compares(offline):
    r = plan_cli(offline, "Qwen/Qwen3-0.6B", "--max-model-len", "4096")
    assert r.returncode == 0, r.stderr
    assert re.search(
        r"compared with [\d.]+ GiB: memory available now on this machine \([\d.]+ GiB total", r.stdout
    )


def test_unknown_name_is_one_line(offline):
    r = plan_cli(offline, "Qwen/Qwen9-1B")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown model 'Qwen/Qwen9-1B'" in lines[0] and "HF_HUB_OFFLINE" in lines[0]


def test_advice_never_repeats_the_flags_given_and_its_context_fits(offline):
    r = plan_cli(offline, *README, "--memory", "16")
    assert r.returncode == 1 and "DOES NOT FIT" in r.stdout
    assert "--quantization int4 --kv-cache-dtype int8" not in r.stdout.split("DOES NOT FIT")[1]
    longest = int(re.search(r"--max-model-len (\d+) fits", r.stdout).group(1))
    flags = README[:1] + README[3:] + ["--memory", "16"]
    assert plan_cli(offline, *flags, "--max-model-len", str(longest)).returncode == 0
    assert plan_cli(offline, *flags, "--max-model-len", str(longest + 256)).returncode == 1


def test_advice_names_the_flags_for_this_context(offline):
    r = plan_cli(offline, "Qwen/Qwen3-4B-Thinking-2507", "--memory", "24")
    assert r.returncode == 1
    suggested = re.search(r"for 262,144 tokens: (.*)", r.stdout).group(1).split()
    assert suggested == ["--quantization", "int8", "--kv-cache-dtype", "int8"]
    assert plan_cli(offline, "Qwen/Qwen3-4B-Thinking-2507", *suggested, "--memory", "24").returncode == 0


def test_largest_context_is_the_limit():
    cfg = ModelConfig.from_dict(known_config("Qwen/Qwen3-8B"))
    fmt = Format("bfloat16", None, "bfloat16")
    memory = 20 * 2**30
    n = largest_context(cfg, 1, fmt, memory)
    assert plan(cfg, n, 1, fmt)["total"] <= memory < plan(cfg, n + 256, 1, fmt)["total"]
    assert largest_context(cfg, 1, fmt, 1000 * 2**30) == cfg.max_context == 40960


def test_known_names_cover_the_corpus():
    assert "Qwen/Qwen3-4B-Thinking-2507" in known_names() and len(known_names()) == 9
    assert known_config("qwen/qwen3-4b-thinking-2507")["rope_theta"] == 5000000
    assert known_config("other/Qwen3-8B") is None
