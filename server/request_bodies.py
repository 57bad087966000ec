"""Request bodies as they arrive, before the app reads them: one place for every route.

- One nesting limit for every JSON body. Decoders (msgspec, Litestar's) and the code that walks
  decoded bodies recurse once per level, so a body nested a few hundred levels deep would end
  in a RecursionError, a 500. `BodyGuard` measures each body as it completes; one deeper than
  ``limits.max_json_depth`` is refused with INVALID_REQUEST_BODY (400) in the family's
  envelope, whichever route, decoder or content type it was sent to. Form bodies are not JSON
  and are not measured.
- A client that leaves before its body is complete (or is cut by the body deadline) is marked
  in the request's state, so the error handler reads the failure that follows as the client
  leaving, not as a server error.
"""

from __future__ import annotations

import numpy as np
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode

_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_STEP = np.zeros(256, dtype=np.int64)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1
_BLOCK = 1 << 20
# Bodies larger than this are measured on a worker thread, off the event loop.
_INLINE_BYTES = 256 * 1024
_FORM_TYPES = (b"multipart/", b"application/x-www-form-urlencoded")


def json_depth(raw: bytes) -> int:
    """How deeply ``raw`` nests arrays and objects; brackets inside strings do not count.

    Linear and vectorised, whatever the input: a quote ends or starts a string unless an odd
    run of backslashes comes before it, and a bracket counts when an even number of such
    quotes comes before it. Processed in blocks, carrying the state across block edges.
    """
    depth = deepest = 0
    in_string = 0  # 1 inside a string
    backslashes = 0  # the run of backslashes that ended the previous block
    for start in range(0, len(raw), _BLOCK):
        block = np.frombuffer(raw, dtype=np.uint8, count=min(_BLOCK, len(raw) - start), offset=start)
        index = np.arange(len(block), dtype=np.int64)
        before = -(backslashes + 1)  # where the last non-backslash was, before this block
        last_plain = np.maximum.accumulate(np.where(block != _BACKSLASH, index, before))
        previous_plain = np.concatenate(([before], last_plain[:-1]))
        escaped = (index - previous_plain - 1) % 2 == 1
        quotes = (block == _QUOTE) & ~escaped
        inside = (np.cumsum(quotes, dtype=np.int64) + in_string) % 2 == 1
        steps = np.where(inside, 0, _STEP[block])
        running = np.cumsum(steps) + depth
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
        in_string = int(inside[-1])
        backslashes = len(block) - 1 - int(last_plain[-1])
    return deepest


def nests_deeper_than(raw: bytes, limit: int) -> bool:
    # Most bodies hold fewer brackets than the limit: they cannot nest deeper, and are not scanned.
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    return json_depth(raw) > limit


CLIENT_LEFT_STATE = "omniserve.client_left_mid_body"


def client_left_mid_body(scope: Scope) -> bool:
    return bool(scope.get("state", {}).get(CLIENT_LEFT_STATE))


class BodyGuard:
    def __init__(self, app: ASGIApp, max_depth: int) -> None:
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        measure = not _is_form(scope)
        chunks: list[bytes] = []
        max_depth = self.max_depth
        body_done = False

        async def guarded_receive() -> ReceiveMessage:
            nonlocal body_done
            message = await receive()
            if body_done:
                return message
            if message["type"] == "http.disconnect":
                body_done = True
                scope.setdefault("state", {})[CLIENT_LEFT_STATE] = True
                return message
            if message["type"] != "http.request":
                return message
            if not measure:
                body_done = not message.get("more_body", False)
                return message
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return message
            body_done = True
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

        await self.app(scope, guarded_receive, send)


def _is_form(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.lower().lstrip().startswith(_FORM_TYPES)
    return False
