"""The page against a real `qthink serve` (tiny random-weight Qwen3) in headless Chromium."""

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from qthink.viewer.trace import load_trace
from tests.helpers.server import free_port

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium: scripts/setup-test-extras.sh installs it"
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
API_KEY = "viewer-test-key"


@pytest.fixture(scope="module")
def server(make_checkpoint):
    # Untied embeddings: a tied random model only repeats its last token, so it never writes
    # an answer after the thinking budget closes the thinking.
    model = make_checkpoint(tie_word_embeddings=False, seed=1)
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qthink",
            "serve",
            str(model),
            "--port",
            str(port),
            "--served-model-name",
            "tiny-qwen3",
            "--api-key",
            API_KEY,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "qthink serve did not come up"
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        browser.close()
        assert not errors, errors


def test_chat_and_trace_against_qthink_serve(server, page, tmp_path):
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready=true]")
    assert "API key" in page.inner_text("#notice")
    page.fill("#api_key", API_KEY)
    page.dispatch_event("#api_key", "change")
    page.wait_for_function("document.getElementById('model-name').textContent === 'tiny-qwen3'")
    assert page.locator("#notice").is_hidden()

    page.fill("#max_tokens", "48")
    page.fill("#max_thinking_tokens", "12")
    page.fill("#prompt", "What is 2 + 2?")
    page.press("#prompt", "Enter")
    turn = page.locator(".turn.assistant").last
    turn.locator("[data-action=save]").wait_for(timeout=60_000)
    assert turn.locator(".error-card").count() == 0
    assert turn.locator(".answer").inner_text().strip()
    panel = turn.locator(".thinking")
    assert panel.get_attribute("open") is None, "thinking folds away once the answer starts"
    turn.locator(".thinking summary").click()
    assert panel.get_attribute("open") is not None
    assert turn.locator(".thinking-body .step").count() >= 1
    turn.locator(".thinking summary").click()
    assert panel.get_attribute("open") is None

    with page.expect_download() as download:
        turn.locator("[data-action=save]").click()
    saved = tmp_path / "serve-trace.json"
    download.value.save_as(saved)
    trace = load_trace(saved)
    tokens = trace.answer.tokens
    parts = [t.part for t in tokens]
    assert parts == sorted(parts, key=["thinking", "answer"].index), "thinking, then the answer"
    assert "</think>" in [t.text for t in tokens if t.part == "thinking"]
    assert len(tokens) == trace.usage["completion_tokens"]
    reasoning_tokens = trace.usage["completion_tokens_details"]["reasoning_tokens"]
    assert parts.count("thinking") == reasoning_tokens + 1, "the thinking ends with </think>"
    assert all(t.logprob is not None for t in tokens)
    # Sampled tokens carry their top 5; the budget's forced closing words have no alternatives: the
    # first is chosen through the constrained logits (itself the only candidate), the rest appended.
    assert len(tokens[0].top) == 5 and {len(t.top) for t in tokens} <= {0, 1, 5}
    assert all(t.top[0].text == t.text for t in tokens if len(t.top) == 1)
    assert trace.timings.first_thinking_token <= trace.timings.first_answer_token
    assert trace.settings["max_thinking_tokens"] == 12
    assert trace.model == "tiny-qwen3"

    turn.locator("[data-action=trace]").click()
    root = page.locator("#trace-root")
    root.locator(".step").first.wait_for()
    steps = root.locator(".step").count()
    count = root.locator("[data-stat=thinking-tokens] .stat-value").inner_text()
    assert count == str(reasoning_tokens)

    page.click(".tab[data-view=chat]")
    page.set_input_files("#load-input", str(saved))
    page.wait_for_selector("#view-trace.active #trace-root .step")
    assert root.locator(".step").count() == steps
    assert json.loads(saved.read_text())["format"] == "qthink-trace"


@pytest.fixture(scope="module")
def default_server():
    """`qthink serve` as the README starts it: no model named, so qthink-nano and its defaults."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "qthink", "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "qthink serve did not come up"
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(30)


def test_untouched_page_defaults_chat_with_the_default_server(default_server, page):
    context = httpx.get(default_server + "/v1/models").json()["data"][0]["max_model_len"]
    page.goto(default_server + "/")
    page.wait_for_selector("body[data-ready=true]")
    assert page.inner_text("#model-name") == "qthink-nano"
    assert page.input_value("#max_tokens") == ""
    assert page.get_attribute("#max_tokens", "max") == str(context)
    page.fill("#prompt", "What is 12 + 30?")
    page.press("#prompt", "Enter")
    turn = page.locator(".turn.assistant").last
    turn.locator("[data-action=save]").wait_for(timeout=120_000)
    assert turn.locator(".error-card").count() == 0
    assert turn.locator(".answer").inner_text().strip()
