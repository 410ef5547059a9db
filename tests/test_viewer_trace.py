"""Trace files: schema, save and load round trip, and clear errors for bad files."""

import json
import subprocess
import sys

import pytest

from qthink.viewer.trace import (
    Answer,
    Timings,
    Trace,
    TraceError,
    TraceToken,
    load_trace,
    parse_trace,
    save_trace,
    trace_from_output,
    trace_schema,
)


def sample_trace() -> Trace:
    tokens = [
        TraceToken(
            text="Two",
            logprob=-0.1,
            part="thinking",
            t=0.05,
            top=[{"text": "Two", "logprob": -0.1}, {"text": "2", "logprob": -2.5}],
        ),
        TraceToken(text=" plus two is four.", logprob=-0.3, part="thinking", t=0.1),
        TraceToken(text="4", id=19, logprob=-0.01, part="answer", t=0.2),
    ]
    return Trace(
        model="tiny",
        settings={"temperature": 0.6, "max_thinking_tokens": 256},
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}],
        answer=Answer(
            reasoning_content="Two plus two is four.", content="4", finish_reason="stop", tokens=tokens
        ),
        timings=Timings(first_token=0.05, first_thinking_token=0.05, first_answer_token=0.2, end=0.21),
    )


def test_save_and_load_round_trip(tmp_path):
    trace = sample_trace()
    path = save_trace(trace, tmp_path / "t.json")
    loaded = load_trace(path)
    assert loaded == trace
    assert loaded.answer.tokens[0].top[1].logprob == -2.5
    assert loaded.question() == "What is 2 + 2?"


def test_saved_file_leaves_out_unknown_fields(tmp_path):
    raw = json.loads(save_trace(sample_trace(), tmp_path / "t.json").read_text())
    assert raw["format"] == "qthink-trace" and raw["version"] == 1
    assert "id" not in raw["answer"]["tokens"][0]
    assert raw["answer"]["tokens"][2]["id"] == 19


def test_extra_fields_survive(tmp_path):
    raw = sample_trace().model_dump()
    raw["tools"] = [{"type": "function", "function": {"name": "clock"}}]
    loaded = load_trace(save_trace(parse_trace(raw), tmp_path / "t.json"))
    assert loaded.model_dump()["tools"][0]["function"]["name"] == "clock"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        ('{"messages": []}', "not a qthink trace"),
        ("[1, 2]", "not a qthink trace"),
        ('{"format": "qthink-trace", "version": 99, "messages": [], "answer": {}}', "newer"),
        ('{"format": "qthink-trace", "messages": []}', "answer"),
        ('{"format": "qthink-trace", "messages": [], "answer": {"tokens": [{"text": "a"}]}}', "part"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(TraceError, match=message):
        load_trace(path)


def test_missing_file():
    with pytest.raises(TraceError, match="cannot read"):
        load_trace("/nonexistent/trace.json")


def test_schema_documents_the_fields():
    schema = trace_schema()
    assert set(schema["required"]) == {"messages", "answer"}
    token = schema["$defs"]["TraceToken"]["properties"]
    assert {"text", "id", "logprob", "top", "part", "t"} <= set(token)
    assert token["part"]["enum"] == ["thinking", "answer", "tool"]


def test_cli_prints_schema():
    result = subprocess.run(
        [sys.executable, "-m", "qthink", "view", "--schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout) == trace_schema()


def test_cli_rejects_a_bad_trace(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"format": "other"}')
    result = subprocess.run(
        [sys.executable, "-m", "qthink", "view", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "not a qthink trace" in result.stderr


def test_trace_from_an_engine_output(tiny_model_dir, tmp_path):
    from qthink.engine.offline import LLM
    from qthink.engine.sampling_params import SamplingParams

    llm = LLM(model=str(tiny_model_dir))
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    params = SamplingParams(max_tokens=48, logprobs=3, max_thinking_tokens=6, seed=1)
    request = llm.chat(messages, params)[0]
    output = request.outputs[0]
    tokenizer = llm.get_tokenizer()
    trace = trace_from_output(messages, request, tokenizer, settings={"max_thinking_tokens": 6})
    assert 0 < trace.timings.first_token <= trace.timings.end

    tokens = trace.answer.tokens
    assert [t.id for t in tokens] == list(output.token_ids)
    assert "".join(t.text for t in tokens) == tokenizer.decode(output.token_ids)
    end = list(output.token_ids).index(tokenizer.token_to_id("</think>"))
    assert [t.part for t in tokens] == ["thinking"] * (end + 1) + ["answer"] * (len(tokens) - end - 1)
    for token, logprobs in zip(tokens, output.logprobs, strict=True):
        assert token.logprob == logprobs[token.id].logprob
        assert [alt.logprob for alt in token.top] == sorted(
            (lp.logprob for lp in logprobs.values()), reverse=True
        )
    assert trace.answer.reasoning_content == output.reasoning_content
    assert load_trace(save_trace(trace, tmp_path / "t.json")) == trace
