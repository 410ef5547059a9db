"""POST /v1/completions: raw prompts in, text out (with the same sampling, streaming and logprobs)."""

import asyncio
import time
import uuid

from fastapi import Request

from qthink.engine.outputs import CompletionOutput, RequestOutput
from qthink.server.errors import APIError
from qthink.server.params import sampling_params, structured_output
from qthink.server.protocol import CompletionRequest
from qthink.server.streaming import (
    event_stream,
    last_output,
    merged,
    sse,
    sse_done,
    stream_outputs,
    unless_disconnected,
)
from qthink.server.tokenizing import PromptTokenizer


async def create_completion(req: CompletionRequest, server, request: Request):
    raw = _prompts(req.prompt)
    prompts = [await _token_ids(p, server.prompts) for p in raw]
    structured = structured_output(req)
    streams = []
    try:
        for ids in prompts:  # each request is checked (and queued) before any response starts
            params = sampling_params(req, req.logprobs, structured)
            streams.append(await stream_outputs(server, ids, params))
    except Exception:
        for stream in streams:
            await stream.aclose()  # leaving a stream aborts its request
        raise
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    head = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": server.reported_name(req.model),
    }
    prefixes = [await _echo(p, ids, server.prompts) if req.echo else "" for p, ids in zip(raw, prompts)]
    if req.stream:
        events = _stream(merged(streams), head, prefixes, req)
        return event_stream(events, streams=streams)
    finals = await unless_disconnected(request, asyncio.gather(*(last_output(s) for s in streams)))
    choices = [
        _choice(c, i * req.n + c.index, prefixes[i] + c.text, c.logprobs)
        for i, final in enumerate(finals)
        for c in final.outputs
    ]
    return {**head, "choices": choices, "usage": _usage(finals)}


def _prompts(prompt) -> list:
    """A prompt is a string or token ids; a list of either is a batch, one choice group each."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        return [prompt]
    if not prompt:
        raise APIError(400, "the prompt is empty", param="prompt")
    return list(prompt)


async def _token_ids(prompt: str | list[int], prompts: PromptTokenizer) -> list[int]:
    if isinstance(prompt, str):
        ids = await prompts.encode(prompt)
    else:
        prompts.check_ids(prompt, "prompt")
        ids = list(prompt)
    if not ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    return ids


async def _echo(prompt: str | list[int], ids: list[int], prompts: PromptTokenizer) -> str:
    return prompt if isinstance(prompt, str) else await prompts.decode(ids)


async def _stream(outputs, head: dict, prefixes: list[str], req: CompletionRequest):
    seen: dict[tuple[int, int], tuple[int, int]] = {}
    last: dict[int, RequestOutput] = {}
    async for i, out in outputs:
        last[i] = out
        for c in out.outputs:
            text_at, tok_at = seen.get((i, c.index), (0, 0))
            text = c.text[text_at:]
            if (i, c.index) not in seen:
                text = prefixes[i] + text
            seen[i, c.index] = (len(c.text), len(c.token_ids))
            lps = c.logprobs[tok_at:] if c.logprobs is not None else None
            piece = CompletionOutput(
                c.index, text, c.token_ids[tok_at:], finish_reason=c.finish_reason, stop_reason=c.stop_reason
            )
            if text or c.finish_reason is not None:
                yield sse({**head, "choices": [_choice(piece, i * req.n + c.index, text, lps)]})
    errors = [out.error for out in last.values() if out.error]
    if errors:
        yield sse({"error": {"message": errors[0], "type": "server_error", "code": 500}})
    elif last and req.stream_options and req.stream_options.include_usage:
        yield sse({**head, "choices": [], "usage": _usage(list(last.values()))})
    yield sse_done()


def _choice(c: CompletionOutput, index: int, text: str, logprobs) -> dict:
    return {
        "index": index,
        "text": text,
        "logprobs": _logprobs(c.token_ids, logprobs),
        "finish_reason": c.finish_reason,
        "stop_reason": c.stop_reason,
    }


def _logprobs(token_ids: list[int], logprobs) -> dict | None:
    if logprobs is None:
        return None
    tokens, token_lps, tops, offsets, at = [], [], [], [], 0
    for token, entry in zip(token_ids, logprobs):
        chosen = entry[token]
        text = chosen.decoded_token or ""
        tokens.append(text)
        token_lps.append(chosen.logprob)
        tops.append({e.decoded_token or "": e.logprob for e in entry.values()})
        offsets.append(at)
        at += len(text)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def _usage(outs: list[RequestOutput]) -> dict:
    prompt = sum(len(out.prompt_token_ids) for out in outs)
    completion = sum(len(c.token_ids) for out in outs for c in out.outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
