"""Codex CLI and Claude Code, unchanged, complete one prompt against `qthink serve` of qthink-nano.

Runs where scripts/agent-clis.sh has installed the two CLIs (npm, ~650 MB, needs the network
once); elsewhere it skips. What nano answers is nano's business: the protocol must complete."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.nano import nano_available, serve_nano

ROOT = Path(__file__).resolve().parent.parent
CLIS = (
    Path(os.environ.get("QTHINK_AGENT_CLIS", Path.home() / ".cache/qthink/agent-clis")) / "node_modules/.bin"
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not nano_available(), reason="qthink-nano's weights are not built"),
    pytest.mark.skipif(
        not (CLIS / "codex").exists() or not (CLIS / "claude").exists(),
        reason="Codex CLI and Claude Code are not installed: run scripts/agent-clis.sh once",
    ),
]


def test_codex_and_claude_code_complete_a_prompt():
    with serve_nano("--max-model-len", "4096", "--api-key", "sk-local") as url:
        run = subprocess.run(
            ["bash", str(ROOT / "scripts/agent-clis.sh"), url, "nano", "sk-local"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert run.returncode == 0, run.stdout + run.stderr
    codex, claude = run.stdout.split("== Claude Code")
    assert "ERROR" not in codex and "tokens used" in run.stdout + run.stderr
    result = json.loads(claude.strip().splitlines()[-1])
    assert result["is_error"] is False and result["usage"]["output_tokens"] > 0
