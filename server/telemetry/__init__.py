"""Traces, metrics and logs: one package so that serving code gains a line or two per call.

``tracing`` builds the tracer provider from settings and the OTEL_* variables, ``http``
wraps every request (request id, access log, HTTP metrics), ``genai`` records one engine
call as a GenAI span plus the gen_ai.server.* metrics, ``tasks`` carries a /v3 task's trace
from its submission to its webhook, ``logs`` writes JSON lines that carry the trace ids.
"""
