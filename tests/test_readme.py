"""The README's examples run as written against what its first command starts: `qthink serve`
with no model (qthink-nano, offline), and the Python API with no model."""

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.server import free_port

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
# nano's answer to the README's question, read from the model's own boxed answer
ANSWER = re.compile(r"answer: .*\\boxed\{(\d+)\}")


def snippet(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


def expected_answer(code: str) -> str:
    a, op, b = re.search(r"What is (\d+) ?([-+*]) ?(\d+)\?", code).groups()
    return str(eval(f"{a}{op}{b}"))  # two integers and an operator from the README


@pytest.fixture(scope="module")
def default_server():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qthink", "serve", "--port", str(port)], stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        assert proc.poll() is None and time.time() < deadline, "qthink serve did not start"
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    yield port
    proc.terminate()
    proc.wait(30)


def run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_openai_client_snippet_works_against_the_default_server(default_server):
    code = snippet("from openai import OpenAI")
    out = run(code.replace("127.0.0.1:8000", f"127.0.0.1:{default_server}"))
    assert ANSWER.search(out).group(1) == expected_answer(code), out


def test_the_python_api_snippet_works_offline():
    code = snippet("from qthink import LLM, SamplingParams")
    out = run(code)
    assert ANSWER.search(out).group(1) == expected_answer(code), out
