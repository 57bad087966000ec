"""One batch line: read and checked at validation, run through the live route's service.

A line that cannot run (not JSON, no custom_id, another endpoint, a body the endpoint's schema
refuses, a repeated custom_id) gets its error result at validation; a line the service refuses
(a model that is not a chat model, a prompt too long) gets the same error body the live route
would answer, with its status. Either way it lands in the error file and the batch goes on.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from schemas.errors import ApiError
from schemas.openai.batches import BatchInputLine, BatchOutputLine, LineError, LineResponse
from schemas.openai.chat import ChatCompletionRequest
from schemas.openai.completions import CompletionRequest
from schemas.openai.embeddings import EmbeddingRequest
from schemas.openai.rerank import RerankRequest
from server.accounts import Charge, Meter
from server.batches.store import LineResult
from server.capabilities.text import TextCapability
from server.errors import openai_error_body
from server.validation import convert

_LINE_DECODER = msgspec.json.Decoder(BatchInputLine)
_ENCODER = msgspec.json.Encoder()

# The request schema of each endpoint a batch may name.
REQUEST_TYPES: dict[str, type[msgspec.Struct]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/rerank": RerankRequest,
}


@dataclass(frozen=True, slots=True)
class ParsedLine:
    """A line that may run: its number (0-based among the file's non-blank lines)."""

    line: int
    custom_id: str
    request: Any


def input_lines(data: bytes) -> list[bytes]:
    """The file's non-blank lines; their positions are the lines' numbers."""
    return [line for line in data.split(b"\n") if line.strip()]


def _same_endpoint(url: str, endpoint: str) -> bool:
    # Lines written for OpenAI name /v1/...; Novita's examples may name /openai/v1/...
    return url.removeprefix("/openai") == endpoint


def parse_lines(data: bytes, endpoint: str) -> tuple[list[ParsedLine], list[LineResult]]:
    """Every line either as a request to run or as its error result."""
    request_type = REQUEST_TYPES[endpoint]
    runnable: list[ParsedLine] = []
    refused: list[LineResult] = []
    seen: set[str] = set()
    for number, raw in enumerate(input_lines(data)):
        try:
            line = _LINE_DECODER.decode(raw)
        except msgspec.ValidationError as exc:  # JSON, but not a line: no custom_id or body
            refused.append(line_error(number, _custom_id_of(raw), "invalid_request", f"Line {number + 1}: {exc}."))
            continue
        except msgspec.DecodeError as exc:
            refused.append(line_error(number, None, "invalid_json_line", f"Line {number + 1} is not JSON: {exc}."))
            continue
        if line.custom_id in seen:
            message = f"Line {number + 1}: custom_id {line.custom_id!r} was already used by an earlier line."
            refused.append(line_error(number, line.custom_id, "duplicate_custom_id", message))
            continue
        seen.add(line.custom_id)
        if line.method.upper() != "POST":
            message = f"Line {number + 1}: method must be POST, not {line.method!r}."
            refused.append(line_error(number, line.custom_id, "invalid_method", message))
            continue
        if line.url and not _same_endpoint(line.url, endpoint):
            message = f"Line {number + 1}: url {line.url!r} is not the batch's endpoint {endpoint}."
            refused.append(line_error(number, line.custom_id, "mismatched_endpoint", message))
            continue
        if line.body.get("stream"):
            message = f"Line {number + 1}: stream is not supported in a batch."
            refused.append(line_error(number, line.custom_id, "invalid_request", message))
            continue
        try:
            request = convert(line.body, request_type, strict=False)
        except ApiError as error:
            refused.append(api_error_result(number, line.custom_id, error))
            continue
        runnable.append(ParsedLine(number, line.custom_id, request))
    return runnable, refused


def _custom_id_of(raw: bytes) -> str | None:
    """The custom_id of a line that is JSON but not a valid line, when it has one."""
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    custom_id = value.get("custom_id") if isinstance(value, dict) else None
    return custom_id if isinstance(custom_id, str) else None


def _output(number: int, ok: bool, line: BatchOutputLine) -> LineResult:
    return LineResult(number, ok, _ENCODER.encode(line))


def line_error(number: int, custom_id: str | None, code: str, message: str) -> LineResult:
    """A line that never reached a service: ``error`` set, no response."""
    output = BatchOutputLine(
        id=_new_id("batch_req"), custom_id=custom_id, response=None, error=LineError(code=code, message=message)
    )
    return _output(number, False, output)


def api_error_result(number: int, custom_id: str | None, error: ApiError) -> LineResult:
    """A line the service refused: the live route's status and error body."""
    body = msgspec.json.decode(openai_error_body(error))
    response = LineResponse(status_code=error.status, request_id=_new_id("req"), body=body)
    return _output(
        number, False, BatchOutputLine(id=_new_id("batch_req"), custom_id=custom_id, response=response, error=None)
    )


def success_result(number: int, custom_id: str, body: msgspec.Struct) -> LineResult:
    response = LineResponse(status_code=200, request_id=_new_id("req"), body=msgspec.to_builtins(body))
    return _output(
        number, True, BatchOutputLine(id=_new_id("batch_req"), custom_id=custom_id, response=response, error=None)
    )


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


LineService = Callable[[Any, Meter], Awaitable[msgspec.Struct]]


def run_charge_id(batch_id: str, line: int, run: int) -> str:
    """The request id of the charge of one run of a line (runs counted from 1)."""
    return f"{batch_id}.{line}.{run}"


class LineMeter(Meter):
    """A meter whose charge has an id the runner can find again (`run_charge_id`): a replica
    taking over a batch refunds the charge that its dead holder's run of a line left open."""

    __slots__ = ("_request_id",)

    def __init__(self, meter: Meter, request_id: str) -> None:
        super().__init__(meter.accounts, meter.key_id)
        self._request_id: str | None = request_id

    def _charge(self, base: float, price: float, most: float) -> Charge:
        # A line's service makes one charge; a further one (none today) gets an id of its own.
        request_id, self._request_id = self._request_id, None
        return Charge(self.accounts, self.key_id, base, price, most, request_id=request_id)


def line_services(text: TextCapability) -> dict[str, LineService]:
    """What runs a line of each endpoint: the live routes' own services (no HTTP loopback)."""
    return {
        "/v1/chat/completions": text.chat.create,
        "/v1/completions": text.completions.create,
        "/v1/embeddings": text.embeddings.create,
        "/v1/rerank": text.rerank.rerank,
    }
