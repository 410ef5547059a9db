"""POST /v1/completions: raw prompts in, text out (with the same sampling, streaming and logprobs)."""

import time
import uuid

from fastapi.responses import StreamingResponse

from qthink.engine.outputs import CompletionOutput, RequestOutput
from qthink.server.errors import APIError
from qthink.server.params import sampling_params, structured_output
from qthink.server.protocol import CompletionRequest
from qthink.server.streaming import last_output, sse, sse_done, stream_outputs


async def create_completion(req: CompletionRequest, server):
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        if len(prompt) != 1:
            raise APIError(
                400, "send one prompt per request (batch by sending requests concurrently)", param="prompt"
            )
        prompt = prompt[0]
    ids = server.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    if not ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    params = sampling_params(req, server.engine.max_model_len, len(ids), req.logprobs, structured_output(req))
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    outputs = await stream_outputs(server, ids, params)
    head = {"id": rid, "object": "text_completion", "created": created, "model": server.model_name}
    prefix = (prompt if isinstance(prompt, str) else server.tokenizer.decode(ids)) if req.echo else ""
    if req.stream:
        return StreamingResponse(_stream(outputs, head, prefix, req), media_type="text/event-stream")
    final = await last_output(outputs)
    choices = [_choice(c, prefix + c.text, c.logprobs) for c in final.outputs]
    return {**head, "choices": choices, "usage": _usage(final)}


async def _stream(outputs, head: dict, prefix: str, req: CompletionRequest):
    seen: dict[int, tuple[int, int]] = {}
    last = None
    async for out in outputs:
        last = out
        for c in out.outputs:
            text_at, tok_at = seen.get(c.index, (0, 0))
            text = c.text[text_at:]
            if c.index not in seen:
                text = prefix + text
            seen[c.index] = (len(c.text), len(c.token_ids))
            lps = c.logprobs[tok_at:] if c.logprobs is not None else None
            piece = CompletionOutput(c.index, text, c.token_ids[tok_at:], finish_reason=c.finish_reason)
            if text or c.finish_reason is not None:
                yield sse({**head, "choices": [_choice(piece, text, lps)]})
    if last is not None and last.error:
        yield sse({"error": {"message": last.error, "type": "server_error", "code": 500}})
    elif last is not None and req.stream_options and req.stream_options.include_usage:
        yield sse({**head, "choices": [], "usage": _usage(last)})
    yield sse_done()


def _choice(c: CompletionOutput, text: str, logprobs) -> dict:
    return {
        "index": c.index,
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


def _usage(out: RequestOutput) -> dict:
    completion = sum(len(c.token_ids) for c in out.outputs)
    return {
        "prompt_tokens": len(out.prompt_token_ids),
        "completion_tokens": completion,
        "total_tokens": len(out.prompt_token_ids) + completion,
    }
