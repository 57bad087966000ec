"""The Prometheus instruments updated while requests run.

Process-wide, as prometheus_client's own default registry is: each app's ``Metrics``
registry registers them next to its scrape-time collectors. Label values come from
bounded sets only (route templates, catalog names, status codes), never from raw paths.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Seconds: from a millisecond health probe to a minutes-long video.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# The buckets the GenAI conventions advise for time to first token and per output token.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5)

HTTP_DURATION = Histogram(
    "http_server_request_duration",
    "HTTP requests by route template, method and status: duration to the last body byte",
    ["method", "route", "status"],
    unit="seconds",
    buckets=_DURATION_BUCKETS,
    registry=None,
)
HTTP_ACTIVE = Gauge("http_server_active_requests", "HTTP requests being served now", registry=None)

GENAI_DURATION = Histogram(
    "gen_ai_server_request_duration",
    "Engine calls (queue wait included) by GenAI operation and model; error_type is empty on success",
    ["operation", "model", "error_type"],
    unit="seconds",
    buckets=_DURATION_BUCKETS,
    registry=None,
)
GENAI_TTFT = Histogram(
    "gen_ai_server_time_to_first_token",
    "From the start of an engine call to its first generated token",
    ["operation", "model"],
    unit="seconds",
    buckets=_TTFT_BUCKETS,
    registry=None,
)
GENAI_TPOT = Histogram(
    "gen_ai_server_time_per_output_token",
    "Decode time per output token after the first",
    ["operation", "model"],
    unit="seconds",
    buckets=_TPOT_BUCKETS,
    registry=None,
)
TOKENS = Counter(
    "omniserve_tokens", "Tokens processed, by type (input or output)", ["operation", "model", "type"], registry=None
)
IMAGES = Counter("omniserve_images", "Images produced", ["operation", "model"], registry=None)
AUDIO_SECONDS = Counter(
    "omniserve_audio_seconds", "Seconds of audio produced or transcribed", ["operation", "model"], registry=None
)
VIDEO_FRAMES = Counter("omniserve_video_frames", "Video frames produced", ["operation", "model"], registry=None)

ALL = (HTTP_DURATION, HTTP_ACTIVE, GENAI_DURATION, GENAI_TTFT, GENAI_TPOT, TOKENS, IMAGES, AUDIO_SECONDS, VIDEO_FRAMES)
