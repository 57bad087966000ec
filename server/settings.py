"""Typed settings: one msgspec Struct, with each field's default and the reason for it.
`server.settings_loading.load_settings` reads it from TOML plus ``OMNISERVE_*`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import msgspec

from engines.base import ModelSpec
from engines.devices import parse_budget

ENV_PREFIX = "OMNISERVE_"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class Limits(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    max_body_bytes: int = 10 * 1024 * 1024
    # Requests (sequences, for chat and completions) one model runs at once; more wait in its
    # queue. 256, as many as vLLM batches by default. A smaller engine (a CPU model) serves a
    # burst of 256 streams with a TTFT that grows with the burst: set this to what it keeps up
    # with, and max_queue_depth to how many may wait, and the rest are answered 429 at once.
    max_running_per_model: int = 256
    # Requests waiting for a model beyond those it runs; a full queue answers 429.
    max_queue_depth: int = 512
    # Longest a request waits for admission before a 503 with Retry-After.
    queue_timeout_s: float = 30.0
    # Upper bound for n (chat/completions) and for the inputs of one embedding request.
    max_n: int = 16
    max_batch_inputs: int = 2048
    # Deepest nesting of arrays and objects in a JSON body: decoders recurse once per level, and a
    # body deeper than the interpreter's stack would fail as a 500; deeper ones answer 400.
    max_json_depth: int = 128
    # Open connections at once; past it a request answers 503 (uvicorn's limit_concurrency), so
    # slow or idle clients cannot hold an unbounded number of sockets and tasks.
    max_connections: int = 1024
    # A request's line and headers must arrive within this long of its first byte (or of the
    # connection opening), else the connection is closed with a 408: clients that trickle their
    # headers (slowloris) cannot hold a connection.
    header_timeout_s: float = 10.0
    # And its body within this long of the headers: trickled bodies are cut the same way.
    # Generous, for large uploads on slow links.
    body_timeout_s: float = 120.0
    # Idle keep-alive connections are closed after this long.
    keep_alive_timeout_s: float = 5.0
    # A request line plus headers longer than this answers 431 (the HTTP parser has no limit).
    max_header_bytes: int = 64 * 1024

    # Sequences one chat or completion request may generate: its prompts times n. Each one
    # takes one of the model's concurrent slots (256, as many as vLLM batches by default), so
    # one request may fill a model but never queue thousands of sequences under one lease.
    max_sequences_per_request: int = 256
    # A chat template is code (Jinja): one from a client could loop or build strings without
    # bound on the server's CPU. Clients may send one (chat_template, or in
    # chat_template_kwargs) only when this is set, for trusted clients only.
    allow_client_chat_templates: bool = False
    # Longest a chat template may take to render one request (off the event loop); past it
    # the request gets a 400. A render cannot be stopped, only abandoned: its thread runs on.
    chat_template_timeout_s: float = 5.0
    # Client templates rendering at once, abandoned ones included, so that slow ones cannot
    # take every thread of the engine pool; more get a 503.
    max_client_template_renders: int = 2
    # Characters in each prompt-like text of the image and video APIs (prompt, negative_prompt,
    # prompt segments): a text encoder's work grows with the prompt while the job holds its
    # device. 4096 is four times Novita's documented 1024 and about 55 CLIP windows.
    max_prompt_chars: int = 4096
    # Pixels in one output image or video frame (width x height, after any upscale or resize):
    # resizing and encoding run on the shared media pool and hold the whole image in memory.
    # 4096 x 4096, the largest /v3 upscale output.
    max_output_pixels: int = 4096 * 4096
    # Pixels a request produces in all (width x height x images or frames). 1024 x 1024 x 128,
    # the largest /v3 video; also 8 images of 2048 x 2048.
    max_request_pixels: int = 1024 * 1024 * 128
    # Images in one chat request (image_url parts, for models that take images): each one is
    # downloaded or decoded, and runs through the model's vision encoder.
    max_chat_images: int = 8
    # Bytes of one chat image, as encoded (a data URL's decoded payload, or a downloaded body;
    # downloads are also bound by tasks.max_fetch_bytes and tasks.fetch_timeout_s).
    max_chat_image_bytes: int = 8 * 1024 * 1024
    # Pixels of one chat image (width x height), read from its header before any pixel is
    # decoded, so a decompression bomb is refused without allocating it.
    max_chat_image_pixels: int = 4096 * 4096

    def __post_init__(self) -> None:
        if self.max_json_depth < 1 or self.max_connections < 1 or self.max_header_bytes < 1024:
            raise ValueError(
                "limits.max_json_depth and limits.max_connections must be at least 1, "
                "limits.max_header_bytes at least 1024"
            )
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"limits.{name} must be positive")
        if self.max_queue_depth < 0:
            raise ValueError("limits.max_queue_depth must be at least 0")
        for name in (
            "max_running_per_model",
            "max_prompt_chars",
            "max_output_pixels",
            "max_request_pixels",
            "max_chat_images",
            "max_chat_image_bytes",
            "max_chat_image_pixels",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"limits.{name} must be at least 1")


class ThreadSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Threads for each class of blocking work, each its own pool (engines/workpools.py), so
    a slow class (an S3 endpoint, a burst of decodes) cannot take the threads of another."""

    engine: int = 32
    media: int = 4
    network: int = 8
    storage: int = 8

    def __post_init__(self) -> None:
        for name in ("engine", "media", "network", "storage"):
            if getattr(self, name) < 1:
                raise ValueError(f"threads.{name} must be at least 1")


class AuthSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Serve without keys on a non-loopback address only when this is set on purpose.
    allow_open: bool = False
    # Extra keys given in configuration (for containers); held in memory as hashes only. Each
    # gets its own id (``static-`` and a digest of the key); they have no balance (unmetered).
    static_keys: list[str] = []
    # The same for admin keys, which may also call the operator routes (/admin).
    static_admin_keys: list[str] = []
    # Host header values (names, without port) an open server answers besides the loopback names
    # and its own address: a page on another site cannot reach it through DNS rebinding. Output
    # URLs are built from the Host header only for these hosts too. "*" allows any host.
    allowed_hosts: list[str] = []


class HttpSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What web pages of other origins may do with this server from a browser (CORS)."""

    # Origins ("https://app.example.com", scheme://host[:port]) whose pages may call the API
    # from a browser and read its answers; "*" allows any origin. Empty: no CORS headers at all,
    # so a browser lets no other site's page read an answer.
    cors_origins: list[str] = []
    # How long a browser may reuse a preflight's answer.
    cors_max_age_s: int = 600

    def __post_init__(self) -> None:
        for origin in self.cors_origins:
            if origin == "*":
                continue
            parts = urlsplit(origin)
            if (
                parts.scheme not in ("http", "https")
                or not parts.netloc
                or origin != f"{parts.scheme}://{parts.netloc}"
            ):
                raise ValueError(f"http.cors_origins: {origin!r} is not an origin (scheme://host[:port]) or '*'")
        if self.cors_max_age_s < 0:
            raise ValueError("http.cors_max_age_s must not be negative")


class MetricsSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Who may read /metrics (queue depths, model names, task counts: operator information)."""

    # "key": on the API port, with an admin key (open only when the whole server is open);
    # "open": on the API port, to anyone; "port": only on its own listener at host:port below.
    access: Literal["open", "key", "port"] = "key"
    host: str = "127.0.0.1"
    port: int = 9464
    # How often the event-loop lag probe wakes (omniserve_event_loop_lag_*): short enough to
    # catch a stall of tens of ms, long enough to cost nothing; 0 turns the probe off.
    loop_lag_interval_s: float = 0.025

    def __post_init__(self) -> None:
        if self.loop_lag_interval_s < 0:
            raise ValueError("metrics.loop_lag_interval_s must not be negative")


class VllmSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Threads for CPU inference in each engine process; 0 leaves the library's default.
    cpu_threads: int = 0


class SchedulerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How much memory models may hold on each device, and how long an unused one stays."""

    # A share of the device's memory ("0.5"), a byte count ("8000000000") or a size ("12GiB").
    host_budget: float | str = 0.8
    # The same for each CUDA GPU.
    gpu_budget: float | str = 0.9
    # Unload a model unused this long (pinned models stay); 0 keeps models until evicted.
    idle_ttl_s: float = 0.0
    # How long /v3 task work waits for a model (a slot, a load, a device turn) before the task
    # fails; interactive requests wait limits.queue_timeout_s.
    background_timeout_s: float = 1800.0
    # Task work that has waited this long goes ahead of interactive requests; 0: never.
    background_aging_s: float = 60.0

    # A model without memory_bytes gets a footprint planned from its files before it loads
    # (engines/sizing.py, docs/architecture.md), so that it is placed and evicted by it and
    # vLLM never takes its default share of the device (0.92 of it).
    # vLLM's KV cache holds this many sequences of max_model_len tokens: enough to batch a few
    # long requests (or many short ones) without reserving the device for a full batch of 256.
    default_sequences: int = 4
    # max_model_len where the catalog gives none: config.json's context, capped at this. A
    # model trained on 128k tokens would otherwise plan gigabytes of cache a sequence; vLLM is
    # given the same limit, so longer prompts get a clear 400.
    default_max_model_len: int = 8192
    # The most of its device's budget one planned KV cache may take, so that several models
    # share a device; a cache never holds less than one full-length sequence.
    kv_cache_share: float = 0.25
    # vLLM's memory beyond weights and cache: the engine-core process (interpreter, torch,
    # kernels), a GPU's CUDA context and graphs, one batch's activations.
    vllm_overhead_bytes: int = 1 << 30
    # Other engines (diffusers, transformers, faster-whisper, Coqui): their weights times this,
    # for activations (a diffusion step at 1024 x 1024 needs about half the weights again).
    activation_factor: float = 1.5

    def __post_init__(self) -> None:
        if self.default_sequences < 1 or self.default_max_model_len < 1:
            raise ValueError("scheduler.default_sequences and scheduler.default_max_model_len must be at least 1")
        if not 0.0 < self.kv_cache_share <= 1.0:
            raise ValueError("scheduler.kv_cache_share must be above 0 and at most 1")
        if self.vllm_overhead_bytes < 0 or self.activation_factor < 1.0:
            raise ValueError("scheduler.vllm_overhead_bytes must not be negative, activation_factor at least 1")
        for name in ("host_budget", "gpu_budget"):
            try:
                parse_budget(getattr(self, name), 1)
            except ValueError as exc:
                raise ValueError(f"scheduler.{name}: {exc}") from None
        for name in ("idle_ttl_s", "background_aging_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"scheduler.{name} must not be negative")
        if self.background_timeout_s <= 0:
            raise ValueError("scheduler.background_timeout_s must be positive")


class TaskSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Concurrent /v3 tasks; image engines also take turns on their device. Each waiting image
    # task holds a worker, so this also bounds how many tasks one image batch can collect.
    workers: int = 8
    # Compatible txt2img tasks (same model, size, steps, sampler, guidance, adapters) arriving
    # within batch_wait_ms of the first run as one pipeline call of at most max_batch_images
    # images; batch_wait_ms = 0 runs every task alone.
    batch_wait_ms: float = 20.0
    max_batch_images: int = 8
    # Lifetime of signed output URLs (the seed's image_url_ttl) and of the files.
    url_ttl_s: int = 3600
    output_max_age_s: int = 86400
    # Webhook targets and fetched URLs may point at private or loopback addresses.
    allow_private_urls: bool = False
    # Requests to client-chosen URLs (webhook deliveries, input images named by URL) run
    # under one total deadline each, DNS to last byte, so a server that trickles bytes cannot
    # hold a request or a worker; a caller may ask for less (vendor.sdapi_fetch_timeout_s).
    fetch_timeout_s: float = 15.0
    # The most bytes such a download reads; past it the request fails with a 400 and memory
    # stays flat. Input images have their own, smaller limit within this one.
    max_fetch_bytes: int = 16 * 1024 * 1024
    # The catalog's safety classifier that extra.enable_nsfw_detection runs. Unset: "demo-nsfw"
    # when the catalog has it, else none; "" turns detection off (such requests get a 400).
    safety_model: str | None = None
    # The catalog's speech model that /v3 txt2speech runs. Unset: "demo-tts" when the catalog has
    # it, else its first speech model; "" turns txt2speech off (submissions get a 404).
    speech_model: str | None = None
    # Tasks waiting for a worker, in all and per key: past either, a submission gets 429
    # QUEUE_FULL (with Retry-After) instead of growing a backlog no one will see the end of.
    max_queued: int = 10_000
    max_queued_per_key: int = 1_000
    # Longest a task may hold a worker (waiting for its model included) before it fails.
    max_run_s: float = 7200.0
    # After a stop signal, how long running tasks may still finish; those still running then
    # are failed with a reason. Tasks that have not started stay queued for the next start.
    drain_grace_s: float = 20.0
    # Finished tasks (their stored request bodies with them) are deleted this long after
    # they end; 0 keeps them forever.
    retention_s: float = 7 * 86400.0
    # A webhook delivery being sent is leased for this long: no other replica sharing the
    # store sends it meanwhile, and it is due again after it if this one died. Must be well
    # above one attempt's deadline (at most fetch_timeout_s).
    webhook_lease_s: float = 60.0

    def __post_init__(self) -> None:
        if self.webhook_lease_s < 2 * self.fetch_timeout_s:
            raise ValueError("tasks.webhook_lease_s must be at least twice tasks.fetch_timeout_s")
        if self.workers < 1:
            raise ValueError("tasks.workers must be at least 1")
        if self.max_queued < 1 or self.max_queued_per_key < 1:
            raise ValueError("tasks.max_queued and tasks.max_queued_per_key must be at least 1")
        if self.max_run_s <= 0 or self.drain_grace_s < 0 or self.retention_s < 0:
            raise ValueError("tasks.max_run_s must be positive, drain_grace_s and retention_s not negative")
        if self.batch_wait_ms < 0 or self.max_batch_images < 1:
            raise ValueError("tasks.batch_wait_ms must not be negative and tasks.max_batch_images at least 1")
        if self.fetch_timeout_s <= 0 or self.max_fetch_bytes < 1:
            raise ValueError("tasks.fetch_timeout_s and tasks.max_fetch_bytes must be positive")


class ResponsesSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Stored responses (/v1/responses with store: true), in SQLite under the data dir."""

    # Stored responses are deleted this long after they were made; 0 keeps them forever.
    retention_s: float = 30 * 86400.0
    # Per key: past this many, the oldest stored response makes room for the newest.
    max_stored_per_key: int = 10_000
    # The most JSON one stored response's conversation may take (its input and, through
    # previous_response_id, everything before it); a request past it is refused with a 400
    # unless it sets store: false. Bounds the disk a chain can take.
    max_conversation_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.retention_s < 0:
            raise ValueError("responses.retention_s must not be negative")
        if self.max_stored_per_key < 1 or self.max_conversation_bytes < 1:
            raise ValueError("responses.max_stored_per_key and responses.max_conversation_bytes must be positive")


class AudioSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Uploads for transcription: OpenAI's own limit is 25 MB.
    max_upload_bytes: int = 25 * 1024 * 1024
    # Decoded duration of one transcription input, enforced while decoding (a container's
    # declared length is only a claim); it bounds the samples one upload can take in memory.
    max_duration_s: float = 3600.0
    # Characters of text per speech request (OpenAI's input limit), and per /v3 task in all.
    # The schemas cap each text field too (schemas/limits.py); this may only lower that.
    max_speech_chars: int = 4096


class VideoSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # The AnimateDiff MotionAdapter folder put over SD 1.x image models when txt2video (or
    # /v1/videos) names one (engines/video/animated.py). Empty: the motion adapter of the
    # catalog's first AnimateDiff model, if any; without one, image models make no videos.
    motion_adapter: str = ""


class BatchSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The Files and Batch API (/v1/files, /v1/batches): what one upload and one batch may hold."""

    # One uploaded file (larger: 413); OpenAI's own limit is 200 MB.
    max_file_bytes: int = 100 * 1024 * 1024
    # Lines of one batch input file, and bytes of one line (more: 400 at upload).
    max_lines: int = 50_000
    max_line_bytes: int = 1024 * 1024
    # Files one key may hold (uploads and batch outputs); past it an upload gets a 400.
    max_files_per_key: int = 1_000
    # Batch lines running at once, all batches together. Keep it under a model's
    # concurrency so interactive requests still find a free slot (they are served first
    # anyway: batch lines lease at background priority).
    concurrent_lines: int = 2
    # Longest completion_window a batch may ask for, in hours ("24h" and "48h" are accepted).
    max_window_h: int = 48
    # Where uploaded and output files' bytes are kept. Empty: <data_dir>/batch_files. With
    # replicas sharing a Redis store (store_url), a folder every replica mounts (NFS, a shared
    # volume): a file uploaded to one replica is read by whichever runs its batch.
    files_dir: str = ""

    def __post_init__(self) -> None:
        if min(self.max_file_bytes, self.max_lines, self.max_line_bytes, self.max_files_per_key) < 1:
            raise ValueError("batches.max_file_bytes, max_lines, max_line_bytes and max_files_per_key must be positive")
        if self.concurrent_lines < 1 or self.max_window_h < 1:
            raise ValueError("batches.concurrent_lines and batches.max_window_h must be at least 1")


class RequestWindows(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Sliding request windows of one API family, per key; 0 means no limit. Unset: the
    family's default (FamilyWindows), so setting one window keeps the other's default."""

    requests_per_hour: int | None = None
    requests_per_day: int | None = None

    def __post_init__(self) -> None:
        if (self.requests_per_hour or 0) < 0 or (self.requests_per_day or 0) < 0:
            raise ValueError("request windows must not be negative (0 means no limit)")


# Each family's windows, (per hour, per day), where the settings do not say.
# OpenAI (/v1, /openai/v1) and Novita's /v3 document no fixed request count (their limits
# depend on the account's tier), so none is imposed unless the operator sets one. Novassium
# documents 100 requests an hour and 2,400 a day per key; its clients expect them. The Stable
# Diffusion API's limits depend on the plan bought, not on a documented number, so none (its
# duplicate-request filter still applies).
FAMILY_WINDOW_DEFAULTS: dict[str, tuple[int, int]] = {
    "openai": (0, 0),
    "v3": (0, 0),
    "novassium": (100, 2400),
    "sdapi": (0, 0),
}


class FamilyWindows(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Each API family's windows, counted per key and per family: a key's Novassium requests
    do not use up its OpenAI ones."""

    openai: RequestWindows = msgspec.field(default_factory=RequestWindows)
    v3: RequestWindows = msgspec.field(default_factory=RequestWindows)
    novassium: RequestWindows = msgspec.field(default_factory=RequestWindows)
    sdapi: RequestWindows = msgspec.field(default_factory=RequestWindows)

    def __post_init__(self) -> None:
        for family, (hour, day) in FAMILY_WINDOW_DEFAULTS.items():
            windows: RequestWindows = getattr(self, family)
            if windows.requests_per_hour is None:
                windows.requests_per_hour = hour
            if windows.requests_per_day is None:
                windows.requests_per_day = day

    def limits(self, family: str) -> tuple[int, int]:
        """The family's (per hour, per day) limits; 0 means none."""
        windows: RequestWindows = getattr(self, family)
        return windows.requests_per_hour or 0, windows.requests_per_day or 0


class AccountSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Per-key request windows and prices; a key's own limits (``omniserve keys limits``)
    override the windows of every family. 0 means no limit."""

    windows: FamilyWindows = msgspec.field(default_factory=FamilyWindows)
    # Deprecated: one window for every family, as before windows existed. When either is set,
    # both apply to every family (the unset one keeps its old default, 100 or 2400) and
    # load_settings warns; combined with accounts.windows they are refused.
    requests_per_hour: int | None = None
    requests_per_day: int | None = None
    # Credits charged per produced output, for keys that have a balance.
    price_per_image: float = 1.0
    price_per_video_frame: float = 0.0
    # Text (chat, completions, embeddings, rerank, score): per 1000 tokens read and written.
    price_per_1k_input_tokens: float = 0.0
    price_per_1k_output_tokens: float = 0.0
    # Audio: per second synthesised (speech) and per second of input (transcription).
    price_per_speech_second: float = 0.0
    price_per_transcription_second: float = 0.0
    # A metered chat or completion without max_tokens is limited to this many new tokens per
    # choice, the amount reserved for it.
    default_max_tokens: int = 1024

    def __post_init__(self) -> None:
        if self.default_max_tokens < 1:
            raise ValueError("accounts.default_max_tokens must be at least 1")
        if self.requests_per_hour is not None or self.requests_per_day is not None:
            if self.windows != FamilyWindows():
                raise ValueError(
                    "accounts.requests_per_hour/requests_per_day (deprecated) and accounts.windows "
                    "cannot be set together; set each family's windows under accounts.windows"
                )
            hour = 100 if self.requests_per_hour is None else self.requests_per_hour
            day = 2400 if self.requests_per_day is None else self.requests_per_day
            self.windows = FamilyWindows(
                **{
                    family: RequestWindows(requests_per_hour=hour, requests_per_day=day)
                    for family in FAMILY_WINDOW_DEFAULTS
                }
            )


class VendorSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The vendor adapters (Novassium, the Stable Diffusion API)."""

    # The catalog's image model behind each; unset: "demo-sd" when the catalog has it,
    # else its first image model; "" turns the family off (its routes answer 404).
    novassium_model: str | None = None
    sdapi_model: str | None = None
    # Novassium takes no steps or guidance; these are used for every request.
    novassium_steps: int = 25
    novassium_guidance_scale: float = 7.0
    # Novassium generates at most this many pixels a side, then resizes to the requested size.
    novassium_max_side: int = 1024
    # How long a Stable Diffusion API request waits for its image before answering
    # "processing" with a fetch URL.
    sdapi_wait_s: float = 20.0
    # Input images the Stable Diffusion API downloads (init_image, mask_image): the total
    # deadline of each download, DNS included (at most tasks.fetch_timeout_s).
    sdapi_fetch_timeout_s: float = 15.0


class ImageToolSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Novita's synchronous /v3 image tools: the catalog model behind each, and their input limits."""

    # The catalog's segmentation model that finds the foreground (remove- and replace-background).
    # Unset: "demo-segmenter" when the catalog has it, else its first segmentation model; ""
    # turns those two routes off (they answer 404).
    segmentation_model: str | None = None
    # The catalog's image model that repaints (replace-background's new background, cleanup's
    # masked area). Unset: "demo-sd" when the catalog has it, else its first image model; ""
    # turns those two routes off.
    inpainting_model: str | None = None
    # The captioner (kind "caption") that /v3/img2prompt runs, and the variation pipeline (kind
    # "variation") that /v3/reimagine runs. Unset: the demo model when the catalog has it, else
    # the catalog's first model of that kind; "" turns the route off (it answers 404). A name
    # that is not such a model in the catalog stops the start.
    caption_model: str | None = None
    reimagine_model: str | None = None
    # Each input image of the background and cleanup tools (and cleanup's mask), as Novita
    # documents them: at most 30 MB of encoded bytes and 16 megapixels. The request body limit
    # of these routes follows from the bytes.
    max_image_bytes: int = 30 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    # replace-background's own limits (Novita: 2048 x 2048, neither side above 4096).
    replace_background_max_pixels: int = 2048 * 2048
    replace_background_max_side: int = 4096
    # Novita's documented limits on img2prompt's and reimagine's input sides (2048x2048 and
    # 1024x1024). Their bytes are bounded by the server's input-image limit (8 MiB).
    img2prompt_max_side: int = 2048
    reimagine_max_side: int = 1024
    # The repainting runs at most this many pixels a side (aspect kept, sides multiples of 8);
    # its result is resized to the input's size, and only the repainted area replaces pixels.
    inpaint_max_side: int = 1024
    inpaint_steps: int = 20
    inpaint_guidance_scale: float = 7.5

    def __post_init__(self) -> None:
        if min(self.max_image_bytes, self.max_image_pixels, self.replace_background_max_pixels) < 1:
            raise ValueError("image_tools.max_image_bytes and the pixel limits must be at least 1")
        if self.replace_background_max_side < 1 or self.inpaint_max_side < 8:
            raise ValueError("image_tools.replace_background_max_side must be positive, inpaint_max_side at least 8")
        if self.inpaint_steps < 1 or self.inpaint_guidance_scale < 0:
            raise ValueError("image_tools.inpaint_steps must be at least 1, inpaint_guidance_scale not negative")
        if self.img2prompt_max_side < 1 or self.reimagine_max_side < 1:
            raise ValueError("image_tools.img2prompt_max_side and reimagine_max_side must be at least 1")


AWS_REGIONS = (
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ca-central-1",
    "ca-west-1",
    "mx-central-1",
    "sa-east-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "il-central-1",
    "me-south-1",
    "me-central-1",
    "af-south-1",
    "ap-east-1",
    "ap-south-1",
    "ap-south-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-7",
)


class S3Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where extra.custom_storage.aws_s3 uploads go. The client names region, bucket and
    path; the server supplies the endpoint and the credentials."""

    # An S3-compatible server (MinIO, Ceph, ...); empty: AWS itself, per the request's region.
    endpoint_url: str = ""
    # Empty: boto3's default chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the shared
    # credentials file, an instance or container role). Without any, such requests get a 400.
    access_key_id: str = ""
    secret_access_key: str = ""
    session_token: str = ""
    # S3-compatible servers often answer only path-style requests ("path").
    addressing_style: Literal["auto", "virtual", "path"] = "auto"
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    # Attempts per upload, the first included (boto3's "standard" retry mode).
    max_attempts: int = 3
    # The buckets a client may name: the server's credentials write there on the client's
    # behalf, so a bucket must be allowed on purpose. Exact names, or a prefix ending in "*"
    # ("tenant-a-*"); "*" alone allows any bucket the credentials reach. Empty (the default):
    # custom_storage.aws_s3 is refused.
    allowed_buckets: list[str] = []
    # The regions a client may name: each gets its own boto3 client, kept for reuse, so the
    # set is fixed. The default is AWS's commercial regions; an S3-compatible server
    # usually wants its own one name here.
    allowed_regions: list[str] = msgspec.field(default_factory=lambda: list(AWS_REGIONS))

    def __post_init__(self) -> None:
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ValueError("s3.access_key_id and s3.secret_access_key must be set together")
        for pattern in self.allowed_buckets:
            if not pattern or "*" in pattern[:-1]:
                raise ValueError(f"s3.allowed_buckets: {pattern!r} is not a bucket name or a prefix ending in '*'")
        if not self.allowed_regions:
            raise ValueError("s3.allowed_regions must name at least one region")


class TelemetrySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where traces go. The standard OTEL_* variables (OTEL_TRACES_EXPORTER,
    OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, ...) win over these when set: they are
    what collectors' operators and sidecar injectors set. See docs/observability.md."""

    # "none": no spans are made at all (metrics and logs still work).
    exporter: Literal["otlp-http", "otlp-grpc", "console", "none"] = "none"
    # The collector's base address (http://collector:4318 for otlp-http, http://collector:4317
    # for otlp-grpc); empty: the OTLP default on localhost.
    endpoint: str = ""
    service_name: str = "omniserve"
    # Share of new traces recorded; a caller's sampled traceparent is always followed.
    sample_ratio: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_ratio <= 1.0:
            raise ValueError("telemetry.sample_ratio must be between 0 and 1")


# Bytes an HMAC key of output URLs needs at least (as server/storage/local.py's SECRET_BYTES).
MIN_URL_SIGNING_KEY_BYTES = 32


class StorageSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where task outputs are kept, and the key that signs their URLs. Replicas serve each
    other's outputs when they share both: a folder every replica mounts, and one key."""

    # Empty: <data_dir>/outputs. A folder on a volume every replica mounts (NFS, a Kubernetes
    # ReadWriteMany claim) lets any replica serve any output.
    outputs_dir: str = ""
    # The HMAC key of output URLs, at least 32 bytes (``openssl rand -hex 32``). Empty: with a
    # Redis store_url, a random one made once in Redis and read by every replica; else
    # <data_dir>/url-signing.key, made on first use.
    url_signing_key: str = ""

    def __post_init__(self) -> None:
        if self.url_signing_key and len(self.url_signing_key.encode()) < MIN_URL_SIGNING_KEY_BYTES:
            raise ValueError(f"storage.url_signing_key must be at least {MIN_URL_SIGNING_KEY_BYTES} bytes")


class ClusterSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Replicas sharing one store (``store_url`` a Redis): which models this one runs and how
    the others learn of it. With the SQLite store there is one server, which runs everything."""

    # Catalog models (names or aliases) this replica runs. Empty: all of them. Every replica
    # knows the whole catalog, so any replica validates and accepts any request; a model
    # only runs where it is served.
    serve: list[str] = []
    # Where other replicas (and the clients they redirect) reach this one. Empty: public_url.
    advertise_url: str = ""
    # How often this replica renews its cluster catalog entry and the leases of its tasks; an
    # entry or lease not renewed within lease_s is dead, and its tasks are taken over.
    heartbeat_s: float = 2.0
    lease_s: float = 10.0
    # Times a task whose replica died mid-run is run again by another replica before it
    # fails with a reason.
    max_task_retries: int = 1
    # Forward an OpenAI-family request for a model served only elsewhere to a replica that
    # serves it, instead of answering 404 with where it is served.
    proxy_to_peers: bool = False
    # A forwarded request gives up on a replica that does not accept the connection within
    # proxy_connect_timeout_s (the next replica serving the model is tried), and on one that
    # sends nothing for proxy_read_timeout_s (a non-streamed answer comes whole: this bounds
    # its whole run, queue wait included).
    proxy_connect_timeout_s: float = 2.0
    proxy_read_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.proxy_connect_timeout_s <= 0 or self.proxy_read_timeout_s <= 0:
            raise ValueError("cluster.proxy_connect_timeout_s and cluster.proxy_read_timeout_s must be positive")
        if self.heartbeat_s <= 0 or self.lease_s < 2 * self.heartbeat_s:
            raise ValueError("cluster.heartbeat_s must be positive and cluster.lease_s at least twice it")
        if self.max_task_retries < 0:
            raise ValueError("cluster.max_task_retries must not be negative")


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = "~/.local/share/omniserve"
    log_level: str = "info"
    # "json": one JSON object per line (with trace and request ids); "text" for reading by eye.
    log_format: Literal["json", "text"] = "json"
    # The address clients use to reach this server (behind a proxy); used for output
    # URLs in webhook payloads. Empty: http://<host>:<port>.
    public_url: str = ""
    # Where API keys, balances and credit reservations live. Empty: SQLite in data_dir (one
    # server). ``redis://host:port/db`` or ``rediss://`` (TLS): a Redis that several replicas
    # share, so a key, a revoke or a balance change is seen by every replica at once.
    store_url: str = ""
    # Connect and read timeout of each Redis call: a store that is down or slow answers 503
    # within this, never hanging a request.
    store_timeout_s: float = 0.5
    # After a failed Redis call, further calls fail at once (503, this Retry-After) for this
    # long before the store is tried again, so a dead store costs one timeout per period.
    store_retry_after_s: float = 2.0
    limits: Limits = msgspec.field(default_factory=Limits)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    vllm: VllmSettings = msgspec.field(default_factory=VllmSettings)
    threads: ThreadSettings = msgspec.field(default_factory=ThreadSettings)
    scheduler: SchedulerSettings = msgspec.field(default_factory=SchedulerSettings)
    tasks: TaskSettings = msgspec.field(default_factory=TaskSettings)
    responses: ResponsesSettings = msgspec.field(default_factory=ResponsesSettings)
    audio: AudioSettings = msgspec.field(default_factory=AudioSettings)
    video: VideoSettings = msgspec.field(default_factory=VideoSettings)
    batches: BatchSettings = msgspec.field(default_factory=BatchSettings)
    s3: S3Settings = msgspec.field(default_factory=S3Settings)
    telemetry: TelemetrySettings = msgspec.field(default_factory=TelemetrySettings)
    accounts: AccountSettings = msgspec.field(default_factory=AccountSettings)
    vendor: VendorSettings = msgspec.field(default_factory=VendorSettings)
    image_tools: ImageToolSettings = msgspec.field(default_factory=ImageToolSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    cluster: ClusterSettings = msgspec.field(default_factory=ClusterSettings)
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    # Empty means: serve the built-in demo catalog, built under data_dir when missing.
    models: list[ModelSpec] = []

    def __post_init__(self) -> None:
        if self.store_url and not self.store_url.startswith(("redis://", "rediss://")):
            raise ValueError("store_url must be empty (SQLite in data_dir), redis://... or rediss://...")
        if self.store_timeout_s <= 0 or self.store_retry_after_s <= 0:
            raise ValueError("store_timeout_s and store_retry_after_s must be positive")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")

    @property
    def public_base_url(self) -> str:
        """Where clients reach this server, for URLs in webhook payloads (a polled task
        result uses the URL the client called instead)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return self.public_url or f"http://{host}:{self.port}"
