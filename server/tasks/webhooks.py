"""Deliver task results to a client's webhook, Novita style.

The body is ``{"event_type": "ASYNC_TASK_RESULT", "payload": <task-result body>}``; a
timeout, a connection error or a non-2xx answer is retried with exponential backoff.
Task webhooks go through the durable outbox (``server/tasks/outbox.py``), which calls
``attempt`` once per try and keeps the retry schedule in the task store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx

from schemas.errors import ApiError
from server.outbound import OutboundHttp
from server.telemetry.tasks import webhook_result, webhook_span

logger = logging.getLogger(__name__)

EVENT_TYPE = "ASYNC_TASK_RESULT"
MAX_BACKOFF_S = 30.0

_ENVELOPE_HEAD = b'{"event_type":"' + EVENT_TYPE.encode() + b'","payload":'


def envelope(payload_json: bytes) -> bytes:
    """Wrap an encoded task-result body without decoding it again (it can hold base64 media)."""
    return _ENVELOPE_HEAD + payload_json + b"}"


def _redacted(url: str) -> str:
    # Webhook URLs often carry a token in the query or userinfo: keep those out of logs.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


class WebhookSender:
    def __init__(
        self,
        outbound: OutboundHttp,
        *,
        timeout_s: float = 5.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
    ) -> None:
        self._outbound = outbound
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        # Deliveries, not attempts: one webhook counts once, whatever its retries.
        self.delivered = 0
        self.failed = 0

    async def deliver(
        self,
        url: str,
        payload_json: bytes,
        headers: dict[str, str] | None = None,
        *,
        trace_context: Mapping[str, str] | None = None,
        wrap: bool = True,
    ) -> bool:
        """POST the result; True once an attempt gets a 2xx, False after the last retry.
        With ``trace_context`` (the task's), the delivery joins that trace and every attempt
        carries its ``traceparent``. ``wrap`` False: the body is sent as it is given (a vendor
        API's own webhook body, or one already in its envelope)."""
        request_headers = {**(headers or {}), "content-type": "application/json"}
        with webhook_span(urlsplit(url).hostname or "", trace_context, request_headers) as span:
            body = envelope(payload_json) if wrap else payload_json
            attempts, failure = await self._deliver(url, body, request_headers)
            webhook_result(span, attempts=attempts, failure=failure)
        return failure is None

    async def attempt(
        self, url: str, body: bytes, *, trace_context: Mapping[str, str] | None = None, attempt: int = 1
    ) -> str | None:
        """One POST of a body as given (the outbox's retries are its own); None when it got a
        2xx, else why not. It joins the task's trace like ``deliver``."""
        request_headers = {"content-type": "application/json"}
        with webhook_span(urlsplit(url).hostname or "", trace_context, request_headers) as span:
            failure = await self._attempt(url, body, request_headers)
            webhook_result(span, attempts=attempt, failure=failure)
        if failure is not None:
            logger.warning("webhook to %s failed (attempt %d): %s", _redacted(url), attempt, failure)
        return failure

    async def _deliver(self, url: str, body: bytes, request_headers: dict[str, str]) -> tuple[int, str | None]:
        """The attempts made and, when none got a 2xx, why the last one failed."""
        failure: str | None = None
        for attempt in range(self._max_retries + 1):
            if attempt:
                await asyncio.sleep(min(self._backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
            failure = await self._attempt(url, body, request_headers)
            if failure is None:
                self.delivered += 1
                return attempt + 1, None
            logger.warning(
                "webhook to %s failed (attempt %d of %d): %s",
                _redacted(url),
                attempt + 1,
                self._max_retries + 1,
                failure,
            )
        self.failed += 1
        return self._max_retries + 1, failure

    async def _attempt(self, url: str, body: bytes, headers: dict[str, str]) -> str | None:
        """One POST; None on success, else why it failed (for the log)."""
        try:
            # Vetted for every attempt and sent over a connection pinned to the vetted
            # addresses (server/outbound.py): a refusal is retried like any failure, and
            # nothing is ever sent to a refused address. One deadline bounds the attempt,
            # DNS included, so a receiver that trickles bytes cannot hold it open; redirects
            # are not followed (the new location was never vetted). The answer's body is
            # not read: its status is all we need.
            status = await self._outbound.post(url, body, headers, param="webhook.url", timeout_s=self._timeout_s)
        except ApiError as exc:
            return f"refused: {exc.message}"
        except (TimeoutError, httpx.TimeoutException):
            return f"no answer within {self._timeout_s:g} s"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"
