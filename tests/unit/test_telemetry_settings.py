"""Which exporter, endpoint, service name and sampler the settings and OTEL_* variables pick."""

from __future__ import annotations

import io
import json
import logging

import msgspec
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from server.settings import Settings, TelemetrySettings
from server.settings_loading import SettingsError, load_settings
from server.telemetry.logs import REQUEST_ID, JsonFormatter
from server.telemetry.tracing import TracingChoice, build_tracer_provider, resolve, span_exporter
from tests.tracing import PROVIDER

HTTP = TelemetrySettings(exporter="otlp-http", endpoint="http://collector:4318", service_name="svc", sample_ratio=0.25)


def test_settings_alone() -> None:
    assert resolve(HTTP, {}) == TracingChoice(
        exporter="otlp-http", endpoint="http://collector:4318/v1/traces", service_name="svc", sample_ratio=0.25
    )
    grpc = msgspec.structs.replace(HTTP, exporter="otlp-grpc", endpoint="http://collector:4317")
    assert resolve(grpc, {}).endpoint == "http://collector:4317"
    assert resolve(TelemetrySettings(), {}).exporter == "none"


def test_otel_variables_win() -> None:
    environ = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4317",
        "OTEL_SERVICE_NAME": "from-env",
        "OTEL_TRACES_SAMPLER": "always_on",
    }
    # The endpoint is left to the exporter, which reads the variable itself.
    assert resolve(TelemetrySettings(), environ) == TracingChoice(
        exporter="otlp-grpc", endpoint=None, service_name="from-env", sample_ratio=None
    )
    assert resolve(HTTP, {"OTEL_TRACES_EXPORTER": "none"}).exporter == "none"
    assert resolve(HTTP, {"OTEL_SDK_DISABLED": "true"}).exporter == "none"
    assert resolve(TelemetrySettings(), {"OTEL_TRACES_EXPORTER": "console,otlp"}).exporter == "console"
    assert resolve(HTTP, {"OTEL_TRACES_EXPORTER": "zipkin"}).exporter == "otlp-http"  # unsupported: settings stand


def test_exporters_and_provider() -> None:
    assert isinstance(span_exporter(resolve(HTTP, {})), HttpExporter)
    assert isinstance(
        span_exporter(resolve(HTTP, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_TRACES_EXPORTER": "otlp"})),
        GrpcExporter,
    )
    assert isinstance(span_exporter(resolve(TelemetrySettings(exporter="console"), {})), ConsoleSpanExporter)
    assert build_tracer_provider(TelemetrySettings(), {}, version="1") is None
    provider = build_tracer_provider(TelemetrySettings(exporter="console", service_name="svc"), {}, version="1")
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "svc"
    ratio = build_tracer_provider(HTTP, {}, version="1")
    assert ratio is not None and "0.25" in ratio.sampler.get_description()
    provider.shutdown()
    ratio.shutdown()


def test_settings_from_the_environment_and_bounds() -> None:
    settings = load_settings(environ={"OMNISERVE_TELEMETRY__EXPORTER": "otlp-grpc", "OMNISERVE_LOG_FORMAT": "text"})
    assert settings.telemetry.exporter == "otlp-grpc" and settings.log_format == "text"
    assert Settings().log_format == "json"
    with pytest.raises(SettingsError):
        load_settings(environ={"OMNISERVE_TELEMETRY__SAMPLE_RATIO": "1.5"})


def test_json_log_lines_carry_trace_and_request_ids() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("omniserve.test-json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    token = REQUEST_ID.set("req-7")
    try:
        with PROVIDER.get_tracer("test").start_as_current_span("work") as span:
            logger.info("hello %s", "there", extra={"status": 200})
        logger.info("outside")
    finally:
        REQUEST_ID.reset(token)
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    context = span.get_span_context()
    assert inside["message"] == "hello there" and inside["level"] == "info" and inside["status"] == 200
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert inside["request_id"] == "req-7" and inside["logger"] == "omniserve.test-json"
    assert "trace_id" not in outside and outside["request_id"] == "req-7"
