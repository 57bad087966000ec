"""One nesting limit for every JSON body, checked before anything decodes or walks it.

Decoders (msgspec, Litestar's) and the code that walks decoded bodies recurse once per level,
so a body nested a few hundred levels deep would end in a RecursionError, a 500. `JsonDepthLimit`
sits in front of the app and measures each request body as it completes; a body deeper than
``limits.max_json_depth`` is refused with INVALID_REQUEST_BODY (400) in the family's envelope,
whichever route, decoder or content type it was sent to. Form bodies are not JSON and are not
measured.
"""

from __future__ import annotations

import re

import numpy as np
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode

# A JSON string, escapes included (the unrolled form: fast on long strings such as base64).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(byte for byte in range(256) if byte not in b"[]{}")
_OPENERS = np.zeros(256, dtype=np.int8)
_OPENERS[[ord("["), ord("{")]] = 1
_BLOCK = 1 << 20
# Bodies larger than this are measured on a worker thread, off the event loop.
_INLINE_BYTES = 256 * 1024
_FORM_TYPES = (b"multipart/", b"application/x-www-form-urlencoded")


def json_depth(raw: bytes) -> int:
    """How deeply ``raw`` nests arrays and objects (brackets inside strings do not count)."""
    if b'"' in raw:
        raw = _STRING.sub(b"", raw)
    brackets = raw.translate(None, _NOT_BRACKET)
    depth = deepest = 0
    for start in range(0, len(brackets), _BLOCK):
        block = np.frombuffer(brackets, dtype=np.uint8, count=min(_BLOCK, len(brackets) - start), offset=start)
        # +1 for an opener, -1 for a closer.
        running = np.cumsum(_OPENERS[block].astype(np.int64) * 2 - 1) + depth
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
    return deepest


def nests_deeper_than(raw: bytes, limit: int) -> bool:
    # Most bodies hold fewer brackets than the limit: they cannot nest deeper, and are not scanned.
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    return json_depth(raw) > limit


class JsonDepthLimit:
    def __init__(self, app: ASGIApp, max_depth: int) -> None:
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_form(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        max_depth = self.max_depth

        async def measured_receive() -> ReceiveMessage:
            message = await receive()
            if message["type"] != "http.request":
                return message
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return message
            body = b"".join(chunks)
            chunks.clear()
            if len(body) > _INLINE_BYTES:
                too_deep = await run_in(WorkPool.MEDIA, nests_deeper_than, body, max_depth)
            else:
                too_deep = nests_deeper_than(body, max_depth)
            if too_deep:
                raise ApiError(
                    ErrorCode.INVALID_REQUEST_BODY,
                    f"The JSON body nests arrays and objects deeper than {max_depth} levels.",
                )
            return message

        await self.app(scope, measured_receive, send)


def _is_form(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.lower().lstrip().startswith(_FORM_TYPES)
    return False
