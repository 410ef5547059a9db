"""The chat page's "Answer now" button, in headless Chromium, against a real server: it ends the thinking."""

from pathlib import Path

import pytest

from qthink.server.thinking_budget import EARLY_STOP_TEXT
from tests.helpers.server import RunningServer

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium: scripts/setup-test-extras.sh installs it"
)


@pytest.fixture(scope="module")
def server(make_checkpoint):
    # Untied random weights write text rather than repeat one token, and never close the thinking.
    model = make_checkpoint(tie_word_embeddings=False, seed=1)
    with RunningServer(model, max_model_len=2048, kv_cache_memory=32 << 20) as s:
        yield s


def test_answer_now_closes_the_thinking_and_the_model_answers(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready=true]")
        page.fill("#max_tokens", "1500")
        page.fill("#prompt", "Think as long as you like.")
        page.press("#prompt", "Enter")
        page.locator("#answer-now").wait_for(state="visible", timeout=60_000)
        page.locator(".turn.assistant .thinking").wait_for(timeout=60_000)
        page.click("#answer-now")
        turn = page.locator(".turn.assistant").last
        turn.locator("[data-action=save]").wait_for(timeout=120_000)
        assert page.locator("#answer-now").is_hidden()
        turn.locator(".thinking summary").click()
        thinking = " ".join(turn.locator(".thinking-body").inner_text().split())
        browser.close()
    assert not errors, errors
    assert EARLY_STOP_TEXT in thinking
