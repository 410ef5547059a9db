"""Chat views fed engine outputs token by token, without a model."""

import asyncio
import json

from qthink.engine.outputs import CompletionOutput, RequestOutput
from qthink.parsing.thinking import ThinkingFormat
from qthink.server.chat import ChatView
from qthink.server.protocol import ChatCompletionRequest
from qthink.tokenizer import IncrementalDetokenizer


def engine_outputs(tok, text: str, finish_reason: str) -> list[RequestOutput]:
    """The cumulative outputs the engine yields while it generates `text` token by token."""
    ids, detok, seen = tok.encode(text), IncrementalDetokenizer(tok), ""
    outs = []
    for n, token in enumerate(ids, 1):
        seen += detok.push([token])
        c = CompletionOutput(0, seen, ids[:n])
        if n == len(ids):
            c.finish_reason = finish_reason
            c.reasoning_content, c.content = ThinkingFormat.from_tokenizer(tok).split(seen, True)
        outs.append(RequestOutput("r", None, [1, 2, 3], [c], finished=n == len(ids)))
    return outs


def view_for(**body) -> ChatView:
    req = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], **body)
    parse_tools = bool(req.tools) and req.tool_choice != "none"
    fmt = ThinkingFormat(start_id=151667, end_id=151668)  # the Qwen3 vocabulary's ids
    return ChatView(req, "qthink-test", fmt, thinking=True, parse_tools=parse_tools)


def streamed(view: ChatView, outs: list[RequestOutput]) -> list[dict]:
    async def run():
        async def source():
            for out in outs:
                yield out

        return [event async for event in view.stream(source())]

    events = asyncio.run(run())
    assert events[-1] == "data: [DONE]\n\n"
    return [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
