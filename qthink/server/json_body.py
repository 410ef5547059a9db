"""Request bodies decoded strictly: a string holding a lone UTF-16 surrogate is refused as bad JSON."""

import json
import re
from collections.abc import Iterable
from typing import Any

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute

SURROGATE = re.compile("[\ud800-\udfff]")
# what a surrogate looks like in a body before decoding: a \\uD800-\\uDFFF escape or its raw bytes
SURROGATE_IN_BODY = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


class LoneSurrogateError(json.JSONDecodeError):
    """A decoded string holds half of a UTF-16 pair, which no text encoding can carry."""

    def __init__(self, doc: str, path: str):
        reason = f"{path or 'the body'} holds a lone UTF-16 surrogate, which is not valid Unicode"
        super().__init__(reason, doc, 0)
        self.path = path


class StrictJSONRequest(Request):
    async def json(self):
        if not hasattr(self, "_json"):
            body = await self.body()
            data = json.loads(body)
            if _may_hold_surrogate(body) and SURROGATE_IN_BODY.search(body):
                path = surrogate_path(data)
                if path is not None:
                    raise LoneSurrogateError(body.decode("utf-8", "replace"), path)
            limit = getattr(self.scope["app"].state, "max_json_values", None)
            if limit is not None and count_values(data, limit) > limit:
                raise HTTPException(
                    413,
                    f"the request body holds more than {limit:,} JSON strings, objects and arrays; "
                    "no prompt that fits this model's context needs that many",
                )
            self._json = data
        return self._json


def count_values(data, limit: int) -> int:
    """The strings, objects and arrays in decoded JSON (numbers and keys not counted), counted
    only to just past `limit`: a body of a million tiny messages is refused before the models
    that validate it spend seconds of the event loop on it."""
    count, pending = 0, [data]
    while pending and count <= limit:
        value = pending.pop()
        if isinstance(value, dict):
            count += 1
            pending.extend(value.values())
        elif isinstance(value, list):
            count += 1
            pending.extend(v for v in value if isinstance(v, (dict, list, str)))
        elif isinstance(value, str):
            count += 1
    return count


def _may_hold_surrogate(body: bytes) -> bool:
    """A fast test (single-byte searches, memchr's speed) before the slower pattern: a body of
    megabytes without a backslash or the lead byte of an encoded surrogate holds none."""
    return b"\\" in body or b"\xed" in body


class StrictJSONRoute(APIRoute):
    """A route whose endpoint, and FastAPI's body parsing, read the body as StrictJSONRequest."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict(request: Request):
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict


def surrogate_path(data, path: str = "") -> str | None:
    """Where the first string (key or value) with a lone surrogate sits, as `messages.0.content`;
    None when there is none (a valid pair decodes to one character and is fine)."""
    if isinstance(data, str):
        return path if SURROGATE.search(data) else None
    items: Iterable[tuple[Any, Any]]
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return None
    for key, value in items:
        inner = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and SURROGATE.search(key):
            return inner
        found = surrogate_path(value, inner)
        if found is not None:
            return found
    return None
