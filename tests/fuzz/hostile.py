"""Requests a schema-driven fuzzer does not make: malformed and hostile JSON documents, and
hostile values put into every field of a request the server accepts.

Schemathesis generates from the document, so its bodies are well-formed JSON of the
documented shape in an honest encoding. These are the rest: nesting a thousand levels deep,
strings of megabytes, numbers that overflow a double or a 64-bit integer, NaN and Infinity
literals, duplicate keys, bytes that are not UTF-8, lone surrogates, digits that are digits
only to Unicode ("²", "١٢٨"), bodies under the wrong media type.
"""

from __future__ import annotations

import base64
import json
import struct
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.audio_inputs import tone
from tests.fuzz.fakeserver import tiny_png_base64

PNG = tiny_png_base64()
PNG_BYTES = base64.b64decode(PNG)
WAV = tone(1.0)
CHAT_MESSAGES = [{"role": "user", "content": "hi"}]
V3_EXTRA = {"response_image_type": "png", "enable_nsfw_detection": True, "nsfw_detection_level": 1}
SDAPI = {
    "key": "any",  # the server is open: the key is not checked
    "model_id": "fake-sd",
    "prompt": "a cat",
    "negative_prompt": "a dog",
    "width": "128",  # the Stable Diffusion API takes numbers as strings too
    "height": 128,
    "samples": "1",
    "num_inference_steps": 2,
    "guidance_scale": 7.5,
    "seed": 5,
    "safety_checker": "no",
    "enhance_prompt": "no",
    "track_id": 7,
}
# Routes the whole-document probes reach: a request id that names no request.
PATH_PARAMETERS = {"{request_id}": "no-such-request", "{batch_id}": "batch_none"}
# What each base body gets when it is not a 200.
BASE_STATUS = {
    # The private init_image is refused, after every other field is read.
    "/api/v3/img2img": 400,
    "/api/v3/inpaint": 400,
    "/api/v3/fetch/{request_id}": 404,
    # A task id that names no task: the id is read, then looked up.
    "/v3/async/task-cancel": 404,
    # An input file id that names no file: the body is read, then the file looked up.
    "/v1/batches": 404,
}
BATCH_LINE = b'{"custom_id": "a", "body": {"model": "fake-chat", "messages": []}}\n'
# A body each JSON route accepts, under its /v1 (or only) path: its fields are what the
# hostile values replace, one at a time, so each replacement is the only thing wrong.
# Optional fields are set, so that they are fuzzed too.
BASE_BODIES: dict[str, dict[str, Any]] = {
    "/v1/batches": {
        "input_file_id": "file-none",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"run": "fuzz"},
    },
    "/v1/chat/completions": {
        "model": "fake-chat",
        "messages": CHAT_MESSAGES,
        "max_tokens": 3,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 5,
        "n": 1,
        "seed": 1,
        "stop": ["zz"],
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "logit_bias": {"97": 1},
        "user": "fuzz",
    },
    "/v1/completions": {
        "model": "fake-chat",
        "prompt": "hi",
        "max_tokens": 3,
        "temperature": 0.5,
        "n": 1,
        "seed": 1,
        "stop": "zz",
        "echo": True,
        "logprobs": 1,
    },
    "/v1/messages": {
        "model": "fake-chat",
        "max_tokens": 3,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "stop_sequences": ["zz"],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 5,
        "metadata": {"user_id": "fuzz"},
    },
    "/v1/responses": {
        "model": "fake-chat",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "instructions": "Be brief.",
        "max_output_tokens": 3,
        "temperature": 0.5,
        "top_p": 0.9,
        "store": False,
        "text": {"format": {"type": "text"}},
    },
    "/v1/messages/count_tokens": {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/detokenize": {"model": "fake-chat", "tokens": [104, 105]},
    "/v1/tokenize": {"model": "fake-chat", "messages": CHAT_MESSAGES, "add_generation_prompt": True},
    "/v1/embeddings": {"model": "fake-embed", "input": ["hello", "world"], "encoding_format": "float"},
    "/v1/rerank": {"model": "fake-rerank", "query": "a cat", "documents": ["a cat sat", "a dog"], "top_n": 1},
    "/v1/score": {"model": "fake-rerank", "text_1": "a cat", "text_2": ["a cat sat", "a dog"]},
    "/v1/classify": {"model": "fake-rerank", "input": ["a cat", "a dog"], "truncate_prompt_tokens": 4},
    "/v1/pooling": {"model": "fake-embed", "input": "a cat", "task": "embed", "encoding_format": "float"},
    "/v1/images/generations": {
        "model": "fake-sd",
        "prompt": "a cat",
        "n": 1,
        "size": "128x128",
        "response_format": "b64_json",
        "output_format": "png",
        "steps": 2,
        "guidance_scale": 7.0,
        "seed": 1,
        "negative_prompt": "a dog",
    },
    "/v1/audio/speech": {
        "model": "tts-1",
        "input": "Hello there.",
        "voice": "alloy",
        "response_format": "wav",
        "speed": 1.0,
    },
    "/v3/async/txt2img": {
        "request": {
            "model_name": "fake-sd",
            "prompt": "a cat",
            "negative_prompt": "a dog",
            "width": 128,
            "height": 128,
            "image_num": 1,
            "steps": 2,
            "seed": 1,
            "guidance_scale": 7.0,
            "sampler_name": "Euler a",
            "clip_skip": 1,
            "loras": [{"model_name": "ok-lora", "strength": 0.5}],
        },
        "extra": V3_EXTRA,
    },
    "/v3/async/img2img": {
        "request": {
            "model_name": "fake-sd",
            "prompt": "a cat",
            "image_base64": PNG,
            "width": 128,
            "height": 128,
            "steps": 2,
            "seed": 1,
            "strength": 0.5,
        },
        "extra": V3_EXTRA,
    },
    "/v3/async/inpainting": {
        "request": {
            "model_name": "fake-sd",
            "prompt": "a cat",
            "image_base64": PNG,
            "mask_image_base64": PNG,
            "steps": 2,
            "seed": 1,
            "mask_blur": 4,
        },
        "extra": V3_EXTRA,
    },
    "/v3/async/upscale": {"request": {"model_name": "fake-upscaler", "image_base64": PNG, "scale_factor": 2}},
    "/v3/img2prompt": {"image_file": PNG},
    "/v3/reimagine": {"image_file": PNG, "extra": {"response_image_type": "webp"}},
    "/v3/async/txt2speech": {
        "request": {"voice_id": "Emily", "language": "en-US", "texts": ["Hello there."], "volume": 1.0, "speed": 1.0},
        "extra": {"response_audio_type": "wav"},
    },
    "/v3/async/task-cancel": {"task_id": "no-such-task"},
    "/v3/async/img2video": {
        "model_name": "fake-svd",
        "image_file": PNG,
        "frames_num": 3,
        "frames_per_second": 6,
        "steps": 2,
        "seed": 1,
        "motion_bucket_id": 127,
        "cond_aug": 0.02,
    },
    "/v3/async/txt2video": {
        "model_name": "fake-animatediff",
        "prompts": [{"frames": 3, "prompt": "a cat"}],
        "width": 64,
        "height": 64,
        "steps": 2,
        "seed": 1,
        "guidance_scale": 7.0,
        "negative_prompt": "a dog",
    },
    "/v3/remove-background": {"image_file": PNG, "extra": {"response_image_type": "webp"}},
    "/v3/replace-background": {"image_file": PNG, "prompt": "a beach", "extra": {"response_image_type": "png"}},
    "/v3/cleanup": {"image_file": PNG, "mask_file": PNG, "extra": {"response_image_type": "jpeg"}},
    "/v3beta/flux-1-schnell": {
        "prompt": "a cat",
        "seed": 1,
        "steps": 2,
        "width": 128,
        "height": 128,
        "image_num": 1,
        "response_image_type": "png",
        "response_image_format": "webp",
    },
    "/v3/async/qwen-image-txt2img": {"prompt": "a cat", "size": "256*256"},
    "/v3/async/wan-t2v": {
        "model_name": "wan2.1-t2v",
        "width": 832,
        "height": 480,
        "seed": 1,
        "prompt": "a cat",
        "negative_prompt": "a dog",
        "loras": [],
        "steps": 2,
        "guidance_scale": 5.0,
        "flow_shift": 3.0,
    },
    "/v3/async/wan-i2v": {
        "model_name": "wan2.1-i2v",
        "width": 480,
        "height": 832,
        "seed": 1,
        "prompt": "it moves",
        "image_url": "data:image/png;base64," + PNG,
        "steps": 2,
        "enable_safety_checker": False,
        "fast_mode": False,
    },
    "/v3/async/hunyuan-video-fast": {
        "model_name": "hunyuan-video-fast",
        "width": 640,
        "height": 480,
        "seed": 1,
        "steps": 2,
        "prompt": "a cat",
        "frames": 85,
    },
    "/api/novassium/v1/generate": {
        "prompt": "a cat",
        "style_preset": "photographic",
        "aspect_ratio": "1:1",
        "samples": 1,
        "negative_prompt": "a dog",
        "seed": 5,
        "output_format": "png",
        "width": 64,
        "height": 64,
    },
    "/api/v3/text2img": SDAPI,
    "/api/v3/img2img": {**SDAPI, "init_image": "http://127.0.0.1:9/init.png", "strength": 0.5},
    "/api/v3/inpaint": {
        **SDAPI,
        "init_image": "http://127.0.0.1:9/init.png",
        "mask_image": "http://127.0.0.1:9/mask.png",
    },
    "/api/v3/fetch/{request_id}": {"key": "any"},
}


class Raw(str):
    """A JSON token written into the document as it is: what ``json.dumps`` cannot write."""


def _nested_list(depth: int) -> Raw:
    return Raw("[" * depth + "0" + "]" * depth)


def _nested_dict(depth: int) -> Raw:
    return Raw('{"a":' * depth + "0" + "}" * depth)


# Each replaces one field in turn. Strings that look like numbers or sizes are for the
# fields that parse them ("size": "128x128", the Stable Diffusion API's string numbers).
FIELD_VALUES: list[tuple[str, Any]] = [
    ("null", None),
    ("true", True),
    ("zero", 0),
    ("minus one", -1),
    ("2^63", 2**63),
    ("2^64", 2**64),
    ("-2^63-1", -(2**63) - 1),
    ("10^40", 10**40),
    ("one half", 0.5),
    ("negative zero", -0.0),
    ("1e308", 1e308),
    ("-1e308", -1e308),
    ("1e309 literal", Raw("1e309")),
    ("-1e400 literal", Raw("-1e400")),
    ("1e-400 literal", Raw("1e-400")),
    ("NaN literal", Raw("NaN")),
    ("Infinity literal", Raw("Infinity")),
    ("-Infinity literal", Raw("-Infinity")),
    ("empty string", ""),
    ("superscript digits", "²x²"),
    ("superscript digit", "²"),
    ("Arabic-Indic digits", "\u0661\u0662\u0668"),
    ("Arabic-Indic size", "\u0661\u0662\u0668x\u0661\u0662\u0668"),
    ("fullwidth digits", "\uff11\uff12\uff18"),
    ("numeric string 1e308", "1e308"),
    ("numeric string NaN", "NaN"),
    ("numeric string -Infinity", "-Infinity"),
    ("hex string", "0x80"),
    ("padded digits", " 128 "),
    ("underscored digits", "1_28"),
    ("NUL", "\x00"),
    ("lone surrogate", Raw('"\\ud800"')),
    ("reversed surrogates", Raw('"\\udc00\\ud800"')),
    ("100k characters", "A" * 100_000),
    ("empty list", []),
    ("empty object", {}),
    ("list nested 1000 deep", _nested_list(1000)),
    ("object nested 1000 deep", _nested_dict(1000)),
]


@dataclass(frozen=True)
class Probe:
    """One request: what is hostile about it, where, and what to send."""

    cause: str
    path: str  # with the query string, for a GET
    content: bytes = b""
    content_type: str | None = "application/json"
    field: str | None = None  # None: the whole document is the hostile part
    method: str = "POST"

    def reproducer(self, limit: int = 300) -> str:
        if self.method == "GET":
            return f"curl 'BASE{self.path}'"
        text = self.content.decode("utf-8", "backslashreplace")
        text = text if len(text) <= limit else f"{text[:limit]}...({len(self.content)} bytes)"
        header = f" -H 'Content-Type: {self.content_type}'" if self.content_type is not None else ""
        return f"curl -X POST{header} --data-raw {json.dumps(text)} 'BASE{self.path}'"


_SLOT = "\x00fuzz-slot\x00"


def _encode(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    return json.dumps(value)


def _leaf_paths(value: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every field of a body, nested ones too (the first item of each list stands for all)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from _leaf_paths(item, (*prefix, key))
    elif isinstance(value, list) and value:
        yield (*prefix, 0)
        yield from _leaf_paths(value[0], (*prefix, 0))


def _replaced(body: Any, path: tuple[str | int, ...], value: Any) -> bytes:
    """``body`` with the field at ``path`` replaced by ``value`` (a Raw token is written as it is)."""
    document = json.loads(json.dumps(body))
    node = document
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = _SLOT
    text = json.dumps(document).replace(json.dumps(_SLOT), _encode(value), 1)
    return text.encode("utf-8")


def field_probes(path: str, body: dict[str, Any]) -> Iterator[Probe]:
    for field in _leaf_paths(body):
        name = ".".join(str(step) for step in field)
        values = FIELD_VALUES + [(cause, _b64(image)) for cause, image in IMAGE_FILES]
        for cause, value in values if _at(body, field) == PNG else FIELD_VALUES:
            yield Probe(cause, path, _replaced(body, field, value), field=name)


def _at(body: Any, path: tuple[str | int, ...]) -> Any:
    for step in path:
        body = body[step]
    return body


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def document_probes(path: str, body: dict[str, Any] | None, max_body_bytes: int) -> Iterator[Probe]:
    """Whole documents that are not the JSON the route reads, or are JSON of a hostile shape."""
    valid = json.dumps(body if body is not None else {}).encode()
    depth = 1000
    yield Probe("arrays nested 1000 deep", path, b"[" * depth + b"]" * depth)
    yield Probe("objects nested 1000 deep", path, b'{"a":' * depth + b"1" + b"}" * depth)
    yield Probe("arrays nested 100000 deep", path, b"[" * 100_000 + b"]" * 100_000)
    yield Probe("unclosed nesting 100000 deep", path, b"[" * 100_000)
    yield Probe("string of 1.5 MB", path, json.dumps({"model": "x" * 1_500_000}).encode())
    yield Probe("body over the size limit", path, b'{"model": "' + b"x" * (max_body_bytes + 1) + b'"}')
    yield Probe("NaN and Infinity literals", path, b'{"model": NaN, "n": Infinity, "seed": -Infinity}')
    yield Probe("number of 400 digits", path, b'{"model": 1' + b"0" * 400 + b"}")
    yield Probe("duplicate keys", path, valid[:-1] + b', "' + _first_key(body) + b'": [[], {}]}')
    yield Probe("duplicate keys, valid last", path, b'{"' + _first_key(body) + b'": [[], {}], ' + valid[1:])
    yield Probe("invalid UTF-8", path, b'{"model": "\xff\xfe\xfd"}')
    yield Probe("overlong UTF-8", path, b'{"model": "\xc0\xaf"}')
    yield Probe("UTF-8-encoded surrogate", path, b'{"model": "\xed\xa0\x80"}')
    yield Probe("truncated UTF-8 in a valid body", path, valid.replace(b'"', b'"\xc3', 1))
    yield Probe("UTF-16 body", path, valid.decode().encode("utf-16"))
    yield Probe("byte order mark", path, b"\xef\xbb\xbf" + valid)
    yield Probe("trailing garbage", path, valid + b"garbage")
    yield Probe("two documents", path, valid + valid)
    yield Probe("NUL bytes", path, b"\x00" * 64)
    yield Probe("empty body", path, b"")
    yield Probe("whitespace only", path, b" \n\t ")
    for token in (b"null", b"true", b"1", b'"x"', b"[]", b"[{}]"):
        yield Probe(f"top-level {token.decode()}", path, token)
    for content_type in (
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "multipart/form-data; boundary=fuzz",
        "application/xml",
        "application/json; charset=utf-16",
        "application/json; charset=nonsense",
        "application/json; boundary",
        "*/*",
        ";;;",
    ):
        yield Probe(f"valid body as {content_type}", path, valid, content_type)
    yield Probe(
        "truncated multipart",
        path,
        b'--fuzz\r\nContent-Disposition: form-data; name="model"\r\n\r\nfake',
        "multipart/form-data; boundary=fuzz",
    )
    yield Probe(
        "multipart part with a 100k header",
        path,
        b'--fuzz\r\nContent-Disposition: form-data; name="' + b"m" * 100_000 + b'"\r\n\r\nx\r\n--fuzz--\r\n',
        "multipart/form-data; boundary=fuzz",
    )


def _first_key(body: dict[str, Any] | None) -> bytes:
    return next(iter(body), "model").encode() if body else b"model"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` and whose pixels are a few bytes:
    what a decompression bomb looks like to a server that reads the header."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels) + _png_chunk(b"IEND", b"")


# Each replaces one image (a base64 field, or a file part) in turn.
IMAGE_FILES: list[tuple[str, bytes]] = [
    ("PNG claiming 100000x100000", _png_claiming(100_000, 100_000)),
    ("PNG claiming 12000x12000", _png_claiming(12_000, 12_000)),
    ("PNG claiming 0x0", _png_claiming(0, 0)),
    ("PNG cut in half", PNG_BYTES[: len(PNG_BYTES) // 2]),
    ("PNG signature only", PNG_BYTES[:8]),
    ("not an image", b"GIF89a" + b"\x00" * 32),
]

# The multipart routes' forms: text fields, and file parts as (filename, bytes, media type).
FormFiles = dict[str, tuple[str, bytes, str]]
MULTIPART_BASES: list[tuple[str, dict[str, str], FormFiles]] = [
    (
        "/v1/images/edits",
        {
            "model": "fake-sd",
            "prompt": "a cat",
            "n": "1",
            "size": "128x128",
            "response_format": "b64_json",
            "output_format": "png",
            "steps": "2",
            "guidance_scale": "7",
            "seed": "1",
            "strength": "0.5",
            "negative_prompt": "a dog",
        },
        {"image": ("in.png", PNG_BYTES, "image/png"), "mask": ("mask.png", PNG_BYTES, "image/png")},
    ),
    (
        "/v1/audio/transcriptions",
        {
            "model": "fake-whisper",
            "response_format": "verbose_json",
            "temperature": "0",
            "language": "en",
            "prompt": "hi",
            "timestamp_granularities[]": "word",
            "vad_filter": "false",
        },
        {"file": ("in.wav", WAV, "audio/wav")},
    ),
    (
        "/v1/audio/translations",
        {"model": "fake-whisper", "response_format": "json", "temperature": "0", "prompt": "hi"},
        {"file": ("in.wav", WAV, "audio/wav")},
    ),
    ("/v1/files", {"purpose": "batch"}, {"file": ("in.jsonl", BATCH_LINE, "application/jsonl")}),
    ("/v1/videos", {"model": "fake-animatediff", "prompt": "a cat", "seconds": "1", "size": "64x64", "seed": "1"}, {}),
    (
        "/v1/videos",
        {"model": "fake-svd", "prompt": "a cat", "seconds": "1", "seed": "1"},
        {"input_reference": ("in.png", PNG_BYTES, "image/png")},
    ),
]
# Form fields arrive as text, so every number and size in them is parsed by the server.
FORM_VALUES: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("superscript digit", "²".encode()),
    ("superscript size", "²x²".encode()),
    ("Arabic-Indic digits", "\u0661\u0662\u0668".encode()),
    ("Arabic-Indic size", "\u0661\u0662\u0668x\u0661\u0662\u0668".encode()),
    ("fullwidth digits", "\uff11\uff12\uff18".encode()),
    ("1e308", b"1e308"),
    ("1e309", b"1e309"),
    ("-1e400", b"-1e400"),
    ("NaN", b"NaN"),
    ("Infinity", b"Infinity"),
    ("-Infinity", b"-Infinity"),
    ("minus one", b"-1"),
    ("400 digits", b"9" * 400),
    ("hex", b"0x80"),
    ("padded digits", b" 1 "),
    ("underscored digits", b"1_0"),
    ("NUL", b"\x00"),
    ("invalid UTF-8", b"\xff\xfe\xfd"),
    ("100k characters", b"A" * 100_000),
    ("JSON null", b"null"),
    ("JSON list", b"[]"),
    ("half a size", b"128x"),
    ("zero size", b"0x0"),
    ("three sides", b"128x128x128"),
    ("negative size", b"-128x-128"),
    ("huge size", b"99999999999x99999999999"),
]
_BOUNDARY = "fuzz-boundary-7e1c"


def _multipart(fields: dict[str, bytes], files: FormFiles) -> bytes:
    parts = [
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
        for name, value in fields.items()
    ]
    parts += [
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        f"Content-Type: {media_type}\r\n\r\n".encode()
        + content
        + b"\r\n"
        for name, (filename, content, media_type) in files.items()
    ]
    return b"".join(parts) + f"--{_BOUNDARY}--\r\n".encode()


def form_probe(cause: str, path: str, fields: dict[str, bytes], files: FormFiles, field: str | None) -> Probe:
    return Probe(cause, path, _multipart(fields, files), f"multipart/form-data; boundary={_BOUNDARY}", field)


def multipart_probes(path: str, fields: dict[str, str], files: FormFiles) -> Iterator[Probe]:
    """Each text field replaced by each FORM_VALUE, each file part by each IMAGE_FILE (or emptied)."""
    encoded = {name: value.encode() for name, value in fields.items()}
    for name in fields:
        for cause, value in FORM_VALUES:
            yield form_probe(cause, path, {**encoded, name: value}, files, name)
    for name, (filename, _, media_type) in files.items():
        for cause, content in [("empty file", b""), *IMAGE_FILES]:
            yield form_probe(cause, path, encoded, {**files, name: (filename, content, media_type)}, name)
    doubled = b"".join(
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )
    yield Probe(
        "every field twice",
        path,
        doubled + _multipart(encoded, files),
        f"multipart/form-data; boundary={_BOUNDARY}",
    )


# Query and path parameters of the GET routes: text the server parses (ids, expiry times,
# signatures, page sizes and cursors).
PARAMETER_VALUES: list[tuple[str, str]] = [
    ("empty", ""),
    ("superscript digit", "²"),
    ("Arabic-Indic digits", "\u0661\u0662\u0668"),
    ("fullwidth digits", "\uff11\uff12\uff18"),
    ("1e308", "1e308"),
    ("1e309", "1e309"),
    ("NaN", "NaN"),
    ("Infinity", "Infinity"),
    ("minus one", "-1"),
    ("-2^63-1", str(-(2**63) - 1)),
    ("2^64", str(2**64)),
    ("400 digits", "9" * 400),
    ("hex", "0x10"),
    ("padded digits", " 1 "),
    ("NUL", "\x00"),
    ("8000 characters", "A" * 8000),
    ("parent directory", ".."),
    ("path traversal", "../../etc/passwd"),
    ("encoded traversal", "%2e%2e%2f"),
    ("JSON list", "[]"),
]


def parameter_probes(path: str, parameters: list[dict[str, Any]]) -> Iterator[Probe]:
    """Each parameter of a GET route replaced by each PARAMETER_VALUE, the others plausible."""
    plain = {parameter["name"]: ("1" if parameter["in"] == "query" else "fuzz") for parameter in parameters}
    for parameter in parameters:
        for cause, value in PARAMETER_VALUES:
            values = {**plain, parameter["name"]: value}
            url = path
            query = {}
            for other in parameters:
                if other["in"] == "path":
                    url = url.replace("{" + other["name"] + "}", urllib.parse.quote(values[other["name"]], safe=""))
                elif other["in"] == "query":
                    query[other["name"]] = values[other["name"]]
            target = f"{url}?{urllib.parse.urlencode(query)}" if query else url
            yield Probe(cause, target, method="GET", content_type=None, field=parameter["name"])
