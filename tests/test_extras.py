"""Optional extras: the engine runs without any of them, and a part used without its extra says
which one to install. Packages are hidden by a real import hook in a subprocess (sitecustomize)."""

import subprocess
import sys

import pytest

from qthink.extras import EXTRAS

HIDE = """
import importlib.abc, os, sys

class Hide(importlib.abc.MetaPathFinder):
    names = set(os.environ["QTHINK_TEST_HIDE"].split(","))

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Hide())
"""
EVERY_EXTRA = sorted({m for _, modules in EXTRAS.values() for m in modules})


@pytest.fixture(scope="module")
def hook_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hide")
    (folder / "sitecustomize.py").write_text(HIDE)
    return folder


def run(hook_dir, hidden: list[str], *args: str) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, QTHINK_TEST_HIDE=",".join(hidden))
    env["PYTHONPATH"] = os.pathsep.join([str(hook_dir), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env)


def test_the_hook_really_hides_a_package(hook_dir):
    r = run(hook_dir, ["fastapi"], "-c", "import fastapi")
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr


@pytest.mark.parametrize(
    "command, hidden, extra",
    [
        (["serve", "--help"], ["fastapi"], "serve"),
        (["view", "--help"], ["uvicorn"], "serve"),
        (["agent", "--help"], ["mcp"], "agent"),
        (["eval", "--help"], ["math_verify"], "eval"),
    ],
)
def test_a_command_without_its_extra_names_it(hook_dir, command, hidden, extra):
    r = run(hook_dir, hidden, "-m", "qthink", *command)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"[{extra}] extra" in r.stderr and f"pip install 'qthink[{extra}]'" in r.stderr
    assert hidden[0] in r.stderr


def test_importing_a_part_without_its_extra_names_it(hook_dir):
    r = run(hook_dir, ["jupyter_client"], "-c", "from qthink.agent import Assistant")
    assert "qthink.extras.MissingExtra" in r.stderr and "[agent] extra (missing: jupyter_client)" in r.stderr


def test_the_engine_runs_without_any_extra(hook_dir, tiny_model_dir):
    code = (
        "from qthink import LLM, SamplingParams\n"
        f"llm = LLM(model={str(tiny_model_dir)!r}, max_model_len=256, kv_cache_memory=4 << 20)\n"
        "out = llm.generate('Hi', SamplingParams(temperature=0, max_tokens=4))[0]\n"
        "print(len(out.outputs[0].token_ids))\n"
    )
    r = run(hook_dir, EVERY_EXTRA, "-c", code)
    assert r.returncode == 0 and r.stdout.strip() == "4", r.stderr
    r = run(
        hook_dir,
        EVERY_EXTRA,
        "-m",
        "qthink",
        "generate",
        "--model",
        str(tiny_model_dir),
        "--max-tokens",
        "4",
        "Hi",
    )
    assert r.returncode == 0, r.stderr
    assert "(stopped at max_tokens)" in r.stdout
