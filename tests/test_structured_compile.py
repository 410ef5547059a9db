"""Grammars compile off the engine thread: a huge one never freezes the other streams, an
oversized one is a 400 naming its field, and one over its time is refused while others go on."""

import json
import threading
import time

import httpx
import pytest

from qthink.engine import structured
from tests.helpers.nano import nano_available, serve_nano

pytestmark = pytest.mark.skipif(not nano_available(), reason="qthink-nano is not built")

NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


def chat(url: str, content: str = "What is 2 + 3?", **extra) -> httpx.Response:
    body = {"model": "nano", "messages": [{"role": "user", "content": content}], **NO_THINKING, **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=120)


class TimedStream:
    """A streamed chat on its own thread, the arrival time of each of its chunks recorded."""

    def __init__(self, url: str, max_tokens: int = 900):
        self.url, self.max_tokens = url, max_tokens
        self.arrivals: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        body = {
            "model": "nano",
            "messages": [{"role": "user", "content": "Count from 1 to 500, one number a line."}],
            "stream": True,
            "max_tokens": self.max_tokens,
            "ignore_eos": True,
            **NO_THINKING,
        }
        with httpx.stream("POST", self.url + "/v1/chat/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    self.arrivals.append(time.monotonic())
                if self.stop.is_set():
                    return

    def wait_for(self, chunks: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.arrivals) < chunks:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the stream did not start"
            time.sleep(0.01)

    def gaps(self, start: float, end: float) -> list[float]:
        """Gaps between consecutive chunks, for the chunks that arrived from `start` to `end`
        (the first one counted from `start`)."""
        times = [start] + [t for t in self.arrivals if start < t <= end]
        return [b - a for a, b in zip(times, times[1:])]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def server():
    with serve_nano() as url:
        yield url


def choice_request(url: str, choices: list[str]) -> tuple[int, str, float]:
    """(status, streamed answer, seconds from sending to the first chunk or the refusal)."""
    body = {"model": "nano", "messages": [{"role": "user", "content": "Pick one."}], "stream": True}
    body |= {"guided_choice": choices, "max_tokens": 60, **NO_THINKING}
    sent, first, text = time.monotonic(), None, ""
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, r.text, time.monotonic() - sent
        for line in r.iter_lines():
            if line.startswith("data: {"):
                first = first or time.monotonic()
                text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
    assert first is not None
    return 200, text.strip(), first - sent


def test_huge_choices_never_freeze_another_stream(server):
    """100,000 entries (the largest list allowed; about 1.5 s of compiling on a worker) are
    served while another stream keeps its pace, and 100,001 are refused at once, also without a
    stall. A compile on the engine thread would stop the other stream for the whole compile."""
    choices = [f"answer number {i}" for i in range(structured.MAX_CHOICES)]
    stream = TimedStream(server)
    try:
        stream.wait_for(20)
        baseline = (stream.arrivals[-1] - stream.arrivals[4]) / (len(stream.arrivals) - 5)
        sent = time.monotonic()
        status, text, waited = choice_request(server, choices)
        gaps = stream.gaps(sent, sent + waited)
        assert status == 200 and text in choices, text
        sent = time.monotonic()
        status, refusal, refused_after = choice_request(server, [*choices, "one too many"])
        refusal_gaps = stream.gaps(sent, sent + refused_after)
        assert status == 400 and "guided_choice" in refusal, refusal
    finally:
        stream.close()
    print(
        f"{len(choices):,} choices: first token after {waited:.2f} s; meanwhile the other stream sent "
        f"{len(gaps)} chunks, largest gap {max(gaps) * 1e3:.0f} ms (its pace before: "
        f"{baseline * 1e3:.0f} ms a chunk); one more refused after {refused_after:.2f} s"
    )
    assert len(gaps) >= 5, "the other stream went on while the grammar compiled"
    assert max(gaps) < max(waited / 3, 10 * baseline), "the other stream froze while the grammar compiled"
    assert max(refusal_gaps, default=0) < max(1.0, 10 * baseline), "the other stream froze on the refusal"


@pytest.mark.parametrize(
    "extra, param, needle",
    [
        ({"guided_choice": ["y" * 1_000_000, "z" * 1_000_001]}, "guided_choice", "characters in all"),
        ({"guided_regex": "a" * (structured.MAX_GRAMMAR_CHARS + 1)}, "guided_regex", "characters long"),
        ({"guided_grammar": "s" * (structured.MAX_GRAMMAR_CHARS + 1)}, "guided_grammar", "characters long"),
    ],
)
def test_an_oversized_grammar_is_a_400_naming_its_field_and_limit(server, extra, param, needle):
    started = time.monotonic()
    r = chat(server, **extra)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and needle in error["message"] and "the limit is" in error["message"]
    assert error["code"] == "grammar_too_large"
    assert time.monotonic() - started < 10, "refused before any compiling"


def test_a_json_schema_too_deep_or_too_long_is_a_400(server):
    deep: dict = {"type": "string"}
    for _ in range(structured.MAX_SCHEMA_DEPTH):
        deep = {"type": "object", "properties": {"a": deep}}
    r = chat(server, response_format={"type": "json_schema", "json_schema": {"name": "d", "schema": deep}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text
    assert "levels deep; the limit is 64" in r.json()["error"]["message"]
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(20_000)}}
    r = chat(server, guided_json=wide)
    assert r.status_code == 400 and r.json()["error"]["param"] == "guided_json", r.text
    assert "characters as JSON; the limit is" in r.json()["error"]["message"]


def test_a_grammar_over_its_time_is_refused_and_the_server_keeps_serving():
    """A regex at the size limit compiles in a few tenths of a second; with a 0.05 s limit it
    is refused with a clear 400, a stream running meanwhile is untouched, and a small grammar
    still compiles and constrains."""
    words = [f"w{i:05d}x" for i in range(30_000)]
    regex = "(" + "|".join(words) + ")"
    assert len(regex) <= structured.MAX_GRAMMAR_CHARS
    with serve_nano("--grammar-compile-timeout", "0.05") as url:
        stream = TimedStream(url)
        try:
            stream.wait_for(5)
            r = chat(url, guided_regex=regex, max_tokens=10)
            assert r.status_code == 400, r.text
            assert "did not compile within 0.05 s" in r.json()["error"]["message"]
            assert r.json()["error"]["code"] == "grammar_timeout"
            seen = len(stream.arrivals)
            stream.wait_for(seen + 5)  # still streaming
        finally:
            stream.close()
        r = chat(url, guided_regex="[0-9]{3}", max_tokens=60)
        assert r.status_code == 200, r.text
        content = r.json()["choices"][0]["message"]["content"]
        assert len(content.strip()) == 3 and content.strip().isdigit()
        assert httpx.get(url + "/health", timeout=5).status_code == 200
