"""The tracer provider, from ``TelemetrySettings`` and the standard OTEL_* variables, and the
Litestar OpenTelemetry plugin that makes the server span of every request.

Precedence: an OTEL_* variable that is set wins over the settings file. Those variables are
what the OpenTelemetry Operator, collectors' sidecars and container platforms inject, so an
SRE can redirect traces without editing omniserve's config; the settings are the defaults.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, Literal

import msgspec
from litestar import Request
from litestar.enums import ScopeType
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.types import Scope
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Span, StatusCode

from schemas.errors import ApiError
from server.settings import TelemetrySettings
from server.telemetry.redaction import RedactingProcessor

log = logging.getLogger("omniserve.telemetry")

ExporterKind = Literal["otlp-http", "otlp-grpc", "console", "none"]
REQUEST_ID_ATTRIBUTE = "omniserve.request_id"
# Probes and scrapes come every few seconds and say nothing about the work served.
UNTRACED_PATHS = ["^/health$", "^/ready$", "^/metrics$"]


class TracingChoice(msgspec.Struct, kw_only=True, frozen=True):
    """What ``TelemetrySettings`` and the environment decide together."""

    exporter: ExporterKind
    # Given to the exporter as is; None lets the exporter read OTEL_EXPORTER_OTLP_* itself.
    endpoint: str | None
    service_name: str
    # None: the SDK reads OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG.
    sample_ratio: float | None


def _exporter_from_env(environ: Mapping[str, str]) -> ExporterKind | None:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not names:
        return None
    first = names.split(",")[0].strip()  # one exporter: the first named
    if first == "otlp":
        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        return "otlp-grpc" if (protocol or "").strip() == "grpc" else "otlp-http"
    if first in ("console", "none"):
        return first  # type: ignore[return-value]
    log.warning("OTEL_TRACES_EXPORTER=%s is not supported here; tracing stays as the settings say", first)
    return None


def resolve(settings: TelemetrySettings, environ: Mapping[str, str]) -> TracingChoice:
    exporter = _exporter_from_env(environ) or settings.exporter
    endpoint: str | None = None
    env_endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if settings.endpoint and not env_endpoint:
        base = settings.endpoint.rstrip("/")
        # The settings name the collector's base address, as OTEL_EXPORTER_OTLP_ENDPOINT does;
        # the HTTP exporter wants the full traces URL.
        endpoint = f"{base}/v1/traces" if exporter == "otlp-http" and not base.endswith("/v1/traces") else base
    sampler_from_env = bool(environ.get("OTEL_TRACES_SAMPLER"))
    return TracingChoice(
        exporter=exporter,
        endpoint=endpoint,
        service_name=environ.get("OTEL_SERVICE_NAME") or settings.service_name,
        sample_ratio=None if sampler_from_env else settings.sample_ratio,
    )


def _console_line(span: ReadableSpan) -> str:
    # One span per line, so the console output is greppable like the JSON logs.
    return span.to_json(indent=None) + "\n"


def span_exporter(choice: TracingChoice) -> SpanExporter | None:
    if choice.exporter == "otlp-http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter(endpoint=choice.endpoint)
    if choice.exporter == "otlp-grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=choice.endpoint)
    if choice.exporter == "console":
        return ConsoleSpanExporter(out=sys.stdout, formatter=_console_line)
    return None


def build_tracer_provider(
    settings: TelemetrySettings, environ: Mapping[str, str], *, version: str
) -> TracerProvider | None:
    """A provider exporting through a batch processor, or None when tracing is off."""
    choice = resolve(settings, environ)
    exporter = span_exporter(choice)
    if exporter is None:
        return None
    sampler: Sampler | None = None
    if choice.sample_ratio is not None:
        sampler = ParentBased(TraceIdRatioBased(choice.sample_ratio))
    # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES (deployment.environment, ...).
    resource = Resource.create({SERVICE_NAME: choice.service_name, SERVICE_VERSION: version})
    provider = TracerProvider(resource=resource, sampler=sampler)
    # Every span leaves through the redaction: URL attributes may carry signatures and tokens.
    provider.add_span_processor(RedactingProcessor(BatchSpanProcessor(exporter)))
    log.info("tracing to %s (%s)", choice.exporter, choice.endpoint or "exporter default")
    return provider


def configure_tracing(
    settings: TelemetrySettings, environ: Mapping[str, str], *, version: str
) -> TracerProvider | None:
    """Build the provider and install it as the global one, which every span here uses."""
    provider = build_tracer_provider(settings, environ, version=version)
    if provider is not None:
        trace.set_tracer_provider(provider)
    return provider


def _span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    # The raw path would make one span name per URL; the route template replaces the
    # method-only name once routing has matched (name_server_span).
    return str(scope.get("method", "HTTP")), {}


def _on_request(span: Span, scope: dict[str, Any]) -> None:
    state = scope.get("state")
    if state is None or not span.is_recording():
        return
    request_id = state.get("request_id")
    if request_id is not None:
        span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)
    # The access log line is written after the span ends; it takes the ids from here.
    state["span_context"] = span.get_span_context()


async def _on_exception(exc: Exception, scope: Scope) -> None:
    span = trace.get_current_span()
    if not span.is_recording():
        return
    name_server_span(scope)  # a guard's refusal comes before the before_request hook
    if isinstance(exc, ApiError):
        span.set_attribute("error.type", exc.code.value)
        if exc.status >= 500:
            span.set_status(StatusCode.ERROR, exc.message)
    else:
        span.set_attribute("error.type", type(exc).__qualname__)


def name_server_span(scope: Scope) -> None:
    """Rename the current server span "{method} {route template}" and set http.route."""
    span = trace.get_current_span()
    template = scope.get("path_template")
    if template and span.is_recording():
        span.update_name(f"{scope.get('method', 'HTTP')} {template}")
        span.set_attribute("http.route", template)


def opentelemetry_plugin(provider: TracerProvider) -> OpenTelemetryPlugin:
    return OpenTelemetryPlugin(
        OpenTelemetryConfig(
            tracer_provider=provider,
            # The ASGI receive/send sub-spans double the span count for no insight.
            exclude_spans=["receive", "send"],
            exclude=UNTRACED_PATHS,
            scopes={ScopeType.HTTP},
            scope_span_details_extractor=_span_details,
            server_request_hook_handler=_on_request,
            after_exception_hook_handler=_on_exception,
        )
    )


def app_options(provider: TracerProvider | None) -> dict[str, Any]:
    """Litestar arguments for tracing with ``provider`` (pass the global one); none without."""
    if provider is None:
        return {}
    return {"plugins": [opentelemetry_plugin(provider)], "before_request": _name_server_span}


async def _name_server_span(request: Request[Any, Any, Any]) -> None:
    name_server_span(request.scope)
