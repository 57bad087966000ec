"""A /v3 task's trace: captured from the submitting request, continued by the runner when
the task executes and by its webhook delivery, whose POST carries ``traceparent`` on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from server.telemetry.genai import error_type

if TYPE_CHECKING:
    from server.tasks.models import Task

_tracer = trace.get_tracer("omniserve.tasks")
R = TypeVar("R")


def capture_trace_context(task: Task) -> None:
    """Store the current span's W3C headers with the task (kept in the task store, so a
    task queued before a restart still joins its trace)."""
    if not task.trace_context:
        propagate.inject(task.trace_context)


def traced_executor(executor: Callable[[Task, Any], Awaitable[R]]) -> Callable[[Task, Any], Awaitable[R]]:
    """The executor, run inside a "task {type}" span that continues the submitter's trace."""

    async def run(task: Task, progress: Any) -> R:
        parent = propagate.extract(task.trace_context)
        attributes = {
            "omniserve.task.id": task.task_id,
            "omniserve.task.type": task.task_type.value,
            "gen_ai.request.model": task.model,
        }
        with _tracer.start_as_current_span(
            f"task {task.task_type.value}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await executor(task, progress)
            except BaseException as exc:
                _fail(span, exc)
                raise

    return run


@contextmanager
def webhook_span(url_host: str, trace_context: Mapping[str, str] | None, headers: dict[str, str]) -> Iterator[Span]:
    """The delivery of one webhook (all its attempts), a child of the task's submitter;
    ``traceparent`` (and ``tracestate``) for this span are added to ``headers``."""
    parent = propagate.extract(trace_context) if trace_context else None
    attributes = {"http.request.method": "POST", "server.address": url_host}
    with _tracer.start_as_current_span(
        "webhook POST",
        context=parent,
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        propagate.inject(headers)
        yield span


def webhook_result(span: Span, *, attempts: int, failure: str | None) -> None:
    if not span.is_recording():
        return
    span.set_attribute("omniserve.webhook.attempts", attempts)
    if failure is not None:
        span.set_attribute("error.type", "webhook_undelivered")
        span.set_status(StatusCode.ERROR, failure)


def _fail(span: Span, exc: BaseException) -> None:
    if span.is_recording():
        span.set_attribute("error.type", error_type(exc))
        span.set_status(StatusCode.ERROR, getattr(exc, "message", None) or type(exc).__qualname__)
