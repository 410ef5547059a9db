"""Server-sent events, and engine output streams whose request errors surface before the response."""

import json

from qthink.engine.sampling_params import SamplingParamsError
from qthink.server.errors import APIError


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def sse_done() -> str:
    return "data: [DONE]\n\n"


async def stream_outputs(server, prompt, params):
    """Submit the request and wait for its first output, so a refused request (too long,
    bad grammar) is a 400 rather than a broken stream; then iterate the rest."""
    outputs = server.engine.generate(prompt, params)
    try:
        first = await anext(outputs)
    except (ValueError, SamplingParamsError) as e:
        await outputs.aclose()
        raise APIError(400, str(e)) from None

    async def rest():
        yield first
        async for out in outputs:
            yield out

    return rest()


async def last_output(outputs):
    """Run a stream to its end; the final, complete output."""
    final = None
    async for out in outputs:
        final = out
    return final
