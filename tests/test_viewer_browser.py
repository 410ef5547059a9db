"""The page in headless Chromium: streaming chat, thinking panel, tool cards, trace view, files.

These tests drive the page against a scripted OpenAI-style stream, which can play a thinking
chain with every kind of step, tool calls and exact logprobs that a random-weight model
cannot; test_viewer_serve.py drives the same page against a real `qthink serve`.
"""

import asyncio
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from qthink.viewer.segment import segment_thinking
from qthink.viewer.trace import load_trace
from qthink.viewer.web import mount

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

THINKING = """Okay, the user is asking for 17 times 24. Let me break it into easy parts.

17 * 24 = 17 * 20 + 17 * 4 = 340 + 68 = 408.

Wait, let me double-check that: 24 * 17 = 24 * 10 + 24 * 7 = 240 + 168 = 408. Yes.

Hmm, wait. Did I read the question right? It says 17 times 24, so yes.

Alternatively, 17 * 25 = 425, and 425 - 17 = 408. Same result.

So the answer is 408."""
ANSWER = "17 × 24 = **408**.\n\nSplit 24 into 20 + 4: 340 + 68 = 408."
TOOL_THINKING = "The user wants the time. I should call the clock tool."
TOOL_CALL = {"name": "get_time", "arguments": {"timezone": "Asia/Shanghai"}}
TOOL_ANSWER = "It is 09:30 in Shanghai."
STEP_DELAY_S = 0.012
SLOW_DELAY_S = 0.2


def pieces(text: str) -> list[str]:
    """Word-sized tokens that join back to the text."""
    return re.findall(r"\s*\S+|\s+", text)


def logprob_of(token: str) -> float:
    # Where a model hesitates: numbers, and the word that turns the chain to a new step.
    if any(c.isdigit() for c in token):
        return -0.9
    if token.strip() in ("Wait,", "Alternatively,", "Hmm,", "So"):
        return -0.7
    return -0.03


class ScriptedChat:
    """An OpenAI-style /v1/chat/completions that streams a fixed thinking chain and answer."""

    def __init__(self):
        self.requests: list[dict] = []

    def chunk(self, delta: dict, token: str | None = None, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        if token is not None:
            lp = logprob_of(token)
            rest = math.log(1 - math.exp(lp))
            top = [
                {"token": token, "logprob": lp},
                {"token": " maybe", "logprob": rest - 0.5},
                {"token": " so", "logprob": rest - 1.5},
            ]
            choice["logprobs"] = {"content": [{"token": token, "logprob": lp, "top_logprobs": top}]}
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": "scripted",
            "choices": [choice],
        }
        return f"data: {json.dumps(body)}\n\n"

    async def events(self, request: dict):
        calling = bool(request.get("tools")) and request["messages"][-1]["role"] != "tool"
        thinking, answer = (TOOL_THINKING, TOOL_ANSWER) if request.get("tools") else (THINKING, ANSWER)
        delay = SLOW_DELAY_S if "slowly" in request["messages"][-1]["content"] else STEP_DELAY_S
        yield self.chunk({"role": "assistant", "content": ""})
        for piece in pieces(thinking):
            await asyncio.sleep(delay)
            yield self.chunk({"reasoning_content": piece}, piece)
        yield self.chunk({}, "</think>")
        if calling:
            call = {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": TOOL_CALL["name"], "arguments": json.dumps(TOOL_CALL["arguments"])},
            }
            yield self.chunk({"tool_calls": [call]}, "<tool_call>", "tool_calls")
        else:
            for piece in pieces(answer):
                await asyncio.sleep(STEP_DELAY_S)
                yield self.chunk({"content": piece}, piece)
            yield self.chunk({}, None, "stop")
        usage = {"prompt_tokens": 20, "completion_tokens": 99}
        yield f"data: {json.dumps({'id': 'chatcmpl-1', 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        def models() -> dict:
            return {"object": "list", "data": [{"id": "scripted", "object": "model"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests.append(body)
            if body.get("temperature", 0) < 0:
                error = {
                    "message": "temperature must be >= 0",
                    "type": "invalid_request_error",
                    "param": "temperature",
                }
                return JSONResponse({"error": error}, status_code=400)
            return StreamingResponse(self.events(body), media_type="text/event-stream")

        mount(app)
        return app


class ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        pass


def serve_in_thread(app: FastAPI) -> tuple[str, ThreadServer]:
    server = ThreadServer(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server


@pytest.fixture(scope="module")
def scripted():
    chat = ScriptedChat()
    base, server = serve_in_thread(chat.app())
    chat.base = base
    yield chat
    server.should_exit = True


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    """Where screenshots go: QTHINK_SCREENSHOTS (e.g. docs/) when set, else a temp folder."""
    folder = os.environ.get("QTHINK_SCREENSHOTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


def open_page(page, base: str) -> None:
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready=true]")


def ask(page, question: str) -> None:
    page.fill("#prompt", question)
    page.press("#prompt", "Enter")


def last_turn_done(page):
    turn = page.locator(".turn.assistant").last
    turn.locator(".turn-footer [data-action=trace]").wait_for(timeout=30_000)
    return turn


def save_from(page, selector: str, folder: Path) -> Path:
    with page.expect_download() as download:
        page.click(selector)
    path = folder / download.value.suggested_filename
    download.value.save_as(path)
    return path


def test_thinking_streams_before_the_answer_then_folds(page, scripted, screenshots):
    open_page(page, scripted.base)
    page.fill("#temperature", "0.3")
    page.fill("#max_thinking_tokens", "512")
    ask(page, "What is 17 * 24?")
    page.wait_for_function("""() => {
        const t = document.querySelector('.turn.assistant .thinking-body');
        const a = document.querySelector('.turn.assistant .answer');
        return t && t.textContent.includes('17 * 24') && a.textContent === '';
    }""")
    assert page.locator(".turn.assistant .thinking").get_attribute("open") is not None
    turn = last_turn_done(page)
    assert "408" in turn.locator(".answer").inner_text()
    panel = turn.locator(".thinking")
    assert panel.get_attribute("open") is None, "thinking folds away once the answer starts"
    turn.locator(".thinking summary").click()
    assert panel.get_attribute("open") is not None
    chips = turn.locator(".thinking-body .chip").all_inner_texts()
    expected = [s.label for s in segment_thinking(THINKING)]
    assert len(chips) == len(expected) == 6
    assert [c.lower() for c in chips] == ["plan", "compute", "check", "backtrack", "alternative", "conclude"]
    page.screenshot(path=str(screenshots / "chat.png"))
    turn.locator(".thinking summary").click()
    assert panel.get_attribute("open") is None

    sent = scripted.requests[-1]
    assert sent["stream"] is True and sent["logprobs"] is True and sent["top_logprobs"] == 5
    assert sent["temperature"] == 0.3 and sent["max_thinking_tokens"] == 512
    assert sent["top_p"] == 0.95 and sent["top_k"] == 20


def test_history_sends_answers_without_thinking(page, scripted):
    open_page(page, scripted.base)
    ask(page, "What is 17 * 24?")
    last_turn_done(page)
    ask(page, "And 18 * 24?")
    page.wait_for_function("document.querySelectorAll('.turn.assistant').length === 2")
    last_turn_done(page)
    messages = scripted.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == ANSWER
    assert "reasoning_content" not in messages[1]
    assert "double-check" not in json.dumps(messages)


def test_trace_view_save_reload_and_compare(page, scripted, screenshots, tmp_path):
    open_page(page, scripted.base)
    ask(page, "What is 17 * 24?")
    last_turn_done(page)
    saved = save_from(page, ".turn.assistant [data-action=save]", tmp_path)
    trace = load_trace(saved)  # the page writes what the Python schema reads
    assert trace.answer.reasoning_content == THINKING and trace.answer.content == ANSWER
    thinking = [t for t in trace.answer.tokens if t.part == "thinking"]
    assert "".join(t.text for t in thinking) == THINKING + "</think>"
    assert all(len(t.top) == 3 for t in trace.answer.tokens)
    assert 0 < trace.timings.first_thinking_token < trace.timings.first_answer_token

    page.click(".turn.assistant [data-action=trace]")
    root = page.locator("#trace-root")
    root.locator(".step").first.wait_for()
    stat = lambda name: root.locator(f"[data-stat={name}] .stat-value").inner_text()  # noqa: E731
    assert stat("thinking-tokens") == str(len(thinking) - 1)  # </think> is not counted
    assert stat("answer-tokens") == str(len(pieces(ANSWER)))
    assert stat("steps") == "6"
    assert root.locator(".step").nth(1).locator(".answer-badge").count() == 1
    assert root.locator(".mm-answer-first").count() == 1
    hesitant = root.locator(".tok", has_text="408").first
    assert float(hesitant.evaluate("e => getComputedStyle(e).getPropertyValue('--conf')")) > 0.5
    page.screenshot(path=str(screenshots / "trace.png"))
    root.locator("[data-mode=entropy]").click()
    assert "mode-entropy" in root.locator(".trace").get_attribute("class")

    resaved = save_from(page, "#trace-root .trace-actions .button >> text=Save trace", tmp_path)
    assert load_trace(resaved) == trace
    page.click(".tab[data-view=chat]")
    page.set_input_files("#load-input", str(resaved))
    page.wait_for_selector("#view-trace.active #trace-root .step")
    assert root.locator(".step").count() == 6
    page.set_input_files("#load-input", [str(saved), str(resaved)])
    page.wait_for_selector("#compare-root .compare-table")
    assert page.locator("#compare-root .same-answer").inner_text() == "Same final answer"
    assert page.locator("#compare-root .compare-col .step").count() == 12
    page.screenshot(path=str(screenshots / "compare.png"))


def test_tool_calls_show_as_cards_and_results_go_back(page, scripted):
    open_page(page, scripted.base)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
            },
        }
    ]
    page.click(".tools-box summary")
    page.fill("#tools", json.dumps(tools))
    ask(page, "What time is it in Shanghai?")
    card = page.locator(".tool-call").first
    card.wait_for()
    assert "get_time" in card.inner_text() and "Asia/Shanghai" in card.inner_text()
    card.locator("textarea").fill('{"time": "09:30"}')
    page.click("text=Send results")
    page.wait_for_selector(".turn.tool .tool-result")
    page.wait_for_function("document.querySelectorAll('.turn.assistant').length === 2")
    turn = last_turn_done(page)
    assert TOOL_ANSWER in turn.inner_text()
    messages = scripted.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["function"]["name"] == "get_time"
    # the current tool loop keeps its thinking, as the chat template renders it
    assert messages[1]["reasoning_content"] == TOOL_THINKING
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": '{"time": "09:30"}'}

    ask(page, "And in Tokyo?")  # a new question ends the loop: its thinking is dropped
    page.wait_for_function("document.querySelectorAll('.turn.assistant').length === 3")
    page.locator(".tool-call").last.wait_for()
    messages = scripted.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "user"]
    assert not any("reasoning_content" in m for m in messages)


def test_bad_tools_json_is_reported(page, scripted):
    open_page(page, scripted.base)
    page.click(".tools-box summary")
    page.fill("#tools", "[{not json")
    count = len(scripted.requests)
    ask(page, "Hi")
    page.wait_for_selector(".toast.error")
    assert "not valid JSON" in page.inner_text(".toast")
    assert len(scripted.requests) == count


def test_qthink_view_opens_saved_traces_without_a_model(page, scripted, tmp_path):
    open_page(page, scripted.base)
    ask(page, "What is 17 * 24?")
    last_turn_done(page)
    saved = save_from(page, ".turn.assistant [data-action=save]", tmp_path)
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "qthink", "view", str(saved), str(saved), "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "qthink viewer on" in process.stdout.readline()
        for _ in range(100):
            try:
                open_page(page, f"http://127.0.0.1:{port}")
                break
            except Exception:  # the socket may open a moment after the banner
                time.sleep(0.1)
        page.wait_for_selector("#view-compare.active .compare-table")
        assert page.locator("#compare-root .compare-col").count() == 2
        assert page.locator("#send").is_disabled()
        assert "qthink view" in page.inner_text("#notice")
    finally:
        process.terminate()
        process.wait(10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_errors_show_in_the_turn(page, scripted):
    open_page(page, scripted.base)
    page.fill("#temperature", "-1")
    ask(page, "What is 17 * 24?")
    error = page.locator(".turn.assistant .error-card")
    error.wait_for()
    assert error.inner_text() == "temperature must be >= 0"
    page.fill("#temperature", "0.6")
    ask(page, "What is 17 * 24?")
    turn = last_turn_done(page)
    assert "408" in turn.inner_text()
    messages = scripted.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "user"], "a failed turn is not history"


def test_stop_keeps_the_partial_thinking(page, scripted, tmp_path):
    open_page(page, scripted.base)
    ask(page, "Think slowly: what is 17 * 24?")
    live = page.locator(".turn.assistant.streaming .thinking-body .chip")
    live.first.wait_for()
    assert live.first.inner_text().lower() == "plan", "finished steps are labelled as they stream"
    page.click("#stop")
    turn = last_turn_done(page)
    assert page.locator("#send").is_visible() and not page.locator("#stop").is_visible()
    trace = load_trace(save_from(page, ".turn.assistant [data-action=save]", tmp_path))
    assert trace.answer.finish_reason == "abort"
    assert 0 < len(trace.answer.reasoning_content) < len(THINKING)
    assert THINKING.startswith(trace.answer.reasoning_content)
    assert turn.locator(".thinking-body .step").count() >= 1


def test_two_answers_to_one_question_compare_in_one_click(page, scripted):
    open_page(page, scripted.base)
    ask(page, "What is 17 * 24?")
    last_turn_done(page)
    page.click("#new-chat")
    ask(page, "What is 17 * 24?")
    last_turn_done(page).locator("[data-action=trace]").click()
    page.click("#trace-root [data-compare='0']")
    page.wait_for_selector("#view-compare.active .compare-table")
    assert page.locator("#compare-root .same-answer").inner_text() == "Same final answer"
    assert page.locator("#compare-root .notice").count() == 0


def test_token_tooltip_lists_the_alternatives(page, scripted):
    open_page(page, scripted.base)
    ask(page, "What is 17 * 24?")
    last_turn_done(page).locator("[data-action=trace]").click()
    page.locator("#trace-root .tok", has_text="340").first.hover()
    tip = page.locator("#tooltip")
    tip.wait_for()
    text = tip.inner_text()
    assert '" 340"' in text and '" maybe"' in text
    assert f"p {math.exp(logprob_of('340')):.3f}" in text


def test_trace_without_tokens_renders_from_text_safely(page, scripted, tmp_path):
    from qthink.viewer.trace import Answer, Trace, save_trace

    answer = Answer(
        reasoning_content="First, add.\n\nWait, carry the one.\n\nSo it is 12.",
        content='It is **12** <img src="x" onerror="document.title=1">',
    )
    path = save_trace(
        Trace(messages=[{"role": "user", "content": "7 + 5?"}], answer=answer), tmp_path / "text-only.json"
    )
    open_page(page, scripted.base)
    page.set_input_files("#load-input", str(path))
    root = page.locator("#trace-root")
    root.locator(".step").first.wait_for()
    assert root.locator(".chip").all_inner_texts() == ["PLAN", "BACKTRACK", "CONCLUDE"]
    assert root.locator(".mode-switch").count() == 0
    assert root.locator(".step").nth(2).locator(".answer-badge").count() == 1
    assert root.locator(".trace-answer b").inner_text() == "12"
    assert root.locator(".trace-answer img").count() == 0
    assert page.title() == "qthink"


def test_a_file_that_is_not_a_trace_is_refused(page, scripted, tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"hello": "world"}')
    open_page(page, scripted.base)
    page.set_input_files("#load-input", str(path))
    page.wait_for_selector(".toast.error")
    assert "not a qthink trace" in page.inner_text(".toast")
    assert page.locator("#view-chat.active").count() == 1


def test_comparing_different_questions_warns(page, scripted, tmp_path):
    from qthink.viewer.trace import Answer, Trace, save_trace

    paths = [
        save_trace(
            Trace(
                messages=[{"role": "user", "content": q}],
                answer=Answer(reasoning_content="So it is 4.", content=a),
            ),
            tmp_path / f"{a}.json",
        )
        for q, a in (("2 + 2?", "4"), ("3 + 3?", "6"))
    ]
    open_page(page, scripted.base)
    page.set_input_files("#load-input", [str(p) for p in paths])
    page.wait_for_selector("#compare-root .compare-table")
    assert "different questions" in page.inner_text("#compare-root .notice")
    assert page.inner_text("#compare-root .same-answer") == "Different final answers"
