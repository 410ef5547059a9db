"""`qthink view` over a real socket: the page, its static files, config and segmentation."""

import subprocess
import sys
import time

import httpx
import pytest

from qthink.viewer.trace import Answer, Trace, TraceToken, save_trace
from qthink.viewer.web import MAX_SEGMENT_CHARS
from tests.helpers.server import free_port


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read()}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(url)


def make_trace(answer: str) -> Trace:
    thinking = ["First", ", add them", ": 2 + 2 = 4", ".\n\n", "So the answer", " is 4."]
    tokens = [TraceToken(text=t, logprob=-0.2, part="thinking") for t in thinking]
    return Trace(
        messages=[{"role": "user", "content": "2 + 2?"}],
        answer=Answer(reasoning_content="".join(thinking), content=answer, tokens=tokens),
    )


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("traces")
    paths = [save_trace(make_trace(a), folder / f"{i}.json") for i, a in enumerate(["4", "5"])]
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "qthink", "view", *map(str, paths), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base + "/viewer/config", process)
        yield base
    finally:
        process.terminate()
        process.wait(10)


def test_page_and_static_files(viewer):
    page = httpx.get(viewer + "/")
    assert page.status_code == 200 and "<title>qthink</title>" in page.text
    for name in ("main.js", "chat.js", "trace.js", "util.js", "stream.js", "style.css"):
        response = httpx.get(f"{viewer}/viewer/static/{name}")
        assert response.status_code == 200, name
        assert len(response.text) > 500, name
    assert 'src="https:' not in page.text and 'href="https:' not in page.text


def test_config_carries_the_traces_and_no_chat(viewer):
    config = httpx.get(viewer + "/viewer/config").json()
    assert config["chat"] is False
    assert [t["answer"]["content"] for t in config["traces"]] == ["4", "5"]
    assert config["labels"]["verify"] == "check"


def test_segment_endpoint_with_tokens(viewer):
    tokens = ["First", ", add them", ": 2 + 2 = 4", ".\n\n", "So the answer", " is 4."]
    result = httpx.post(viewer + "/viewer/segment", json={"tokens": tokens, "answer": "4"}).json()
    assert [s["label"] for s in result["steps"]] == ["plan", "conclude"]
    assert [(s["token_start"], s["token_end"]) for s in result["steps"]] == [(0, 4), (4, 6)]
    assert result["answer_token"] == 2 and result["answer_step"] == 0


def test_segment_endpoint_needs_the_thinking(viewer):
    response = httpx.post(viewer + "/viewer/segment", json={"answer": "4"})
    assert response.status_code == 400
    assert "text" in response.json()["detail"]


def test_segment_endpoint_refuses_more_than_it_can_segment_quickly(viewer):
    text = "Let me add them.\n\n" * (MAX_SEGMENT_CHARS // 18 + 1)
    response = httpx.post(viewer + "/viewer/segment", json={"text": text}, timeout=60)
    assert response.status_code == 413
    assert f"{MAX_SEGMENT_CHARS:,} characters" in response.json()["detail"]


def test_view_refuses_three_traces(tmp_path):
    path = save_trace(make_trace("4"), tmp_path / "t.json")
    result = subprocess.run(
        [sys.executable, "-m", "qthink", "view", *[str(path)] * 3], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "two to compare" in result.stderr
