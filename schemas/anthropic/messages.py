"""Anthropic's Messages API: the request, the message, and the count_tokens bodies.

Unknown fields are refused with a 400 that names them (``forbid_unknown_fields``): a field
this server does not implement would otherwise be dropped without a word. Fields Anthropic's
clients send that change nothing a client could rely on here are accepted and ignored:
``thinking`` and ``service_tier`` on the request, ``cache_control`` and ``citations`` on
content blocks and on the request (prompt caching is a hint; no citations are made), ``speed``
and ``inference_geo`` (hints about where and how fast to serve) and ``output_config.effort``
(no model here has a separate thinking phase to spend effort on).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec


class TextBlock(msgspec.Struct, tag="text", tag_field="type", kw_only=True, forbid_unknown_fields=True):
    text: str
    cache_control: dict[str, Any] | None = None
    citations: list[dict[str, Any]] | None = None


class ImageBlock(msgspec.Struct, tag="image", tag_field="type", kw_only=True, forbid_unknown_fields=True):
    # base64 / url / file sources; no model served here reads images, so they are refused.
    source: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type", kw_only=True, forbid_unknown_fields=True):
    """A tool call the assistant made earlier in the conversation."""

    id: str
    name: str
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class ToolResultBlock(msgspec.Struct, tag="tool_result", tag_field="type", kw_only=True, forbid_unknown_fields=True):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock] | None = None
    is_error: bool | None = None
    cache_control: dict[str, Any] | None = None


InputBlock = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock


class InputMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: Literal["user", "assistant"]
    content: str | list[InputBlock]


class ToolDefinition(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    input_schema: dict[str, Any]
    description: str | None = None
    type: Literal["custom"] | None = None
    cache_control: dict[str, Any] | None = None


class ToolChoiceAuto(msgspec.Struct, tag="auto", tag_field="type", kw_only=True, forbid_unknown_fields=True):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(msgspec.Struct, tag="any", tag_field="type", kw_only=True, forbid_unknown_fields=True):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(msgspec.Struct, tag="tool", tag_field="type", kw_only=True, forbid_unknown_fields=True):
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(msgspec.Struct, tag="none", tag_field="type", kw_only=True, forbid_unknown_fields=True):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class Metadata(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    user_id: str | None = None


class JsonOutputFormat(msgspec.Struct, tag="json_schema", tag_field="type", kw_only=True, forbid_unknown_fields=True):
    schema: dict[str, Any]


class OutputConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Structured output: the answer's text follows the schema.
    format: JsonOutputFormat | None = None
    # Accepted, ignored.
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None


class MessageInputs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What both /v1/messages and /v1/messages/count_tokens read: the prompt."""

    model: str
    messages: list[InputMessage]
    system: str | list[TextBlock] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    output_config: OutputConfig | None = None
    # Accepted, ignored: no model served here has a separate thinking phase; caching and
    # speed are hints.
    thinking: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None
    speed: Literal["standard", "fast"] | None = None


class MessagesRequest(MessageInputs, kw_only=True, forbid_unknown_fields=True):
    # Required, as Anthropic requires it.
    max_tokens: Annotated[int, msgspec.Meta(ge=1)]
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=1)] | None = None
    metadata: Metadata | None = None
    # Accepted, ignored: there is one tier and one place here.
    service_tier: str | None = None
    inference_geo: str | None = None


class CountTokensRequest(MessageInputs, kw_only=True, forbid_unknown_fields=True):
    pass


class CountTokensResponse(msgspec.Struct, kw_only=True):
    input_tokens: int


# The answer. Fields Anthropic always sends are sent here too, null or not.

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class TextContent(msgspec.Struct, tag="text", tag_field="type", kw_only=True):
    text: str


class ToolUseContent(msgspec.Struct, tag="tool_use", tag_field="type", kw_only=True):
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = TextContent | ToolUseContent


class MessageUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int


class Message(msgspec.Struct, kw_only=True):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[ContentBlock]
    model: str
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: MessageUsage


# Stream events (each sent as ``event: <type>`` and ``data: <json>``).


class MessageStart(msgspec.Struct, tag="message_start", tag_field="type", kw_only=True):
    message: Message


class ContentBlockStart(msgspec.Struct, tag="content_block_start", tag_field="type", kw_only=True):
    index: int
    content_block: ContentBlock


class Ping(msgspec.Struct, tag="ping", tag_field="type", kw_only=True):
    pass


class TextDelta(msgspec.Struct, tag="text_delta", tag_field="type", kw_only=True):
    text: str


class InputJsonDelta(msgspec.Struct, tag="input_json_delta", tag_field="type", kw_only=True):
    partial_json: str


class ContentBlockDelta(msgspec.Struct, tag="content_block_delta", tag_field="type", kw_only=True):
    index: int
    delta: TextDelta | InputJsonDelta


class ContentBlockStop(msgspec.Struct, tag="content_block_stop", tag_field="type", kw_only=True):
    index: int


class StopDelta(msgspec.Struct, kw_only=True):
    stop_reason: StopReason | None
    stop_sequence: str | None


class OutputUsage(msgspec.Struct, kw_only=True):
    output_tokens: int


class MessageDelta(msgspec.Struct, tag="message_delta", tag_field="type", kw_only=True):
    delta: StopDelta
    usage: OutputUsage


class MessageStop(msgspec.Struct, tag="message_stop", tag_field="type", kw_only=True):
    pass


StreamEvent = (
    MessageStart | ContentBlockStart | Ping | ContentBlockDelta | ContentBlockStop | MessageDelta | MessageStop
)


# Errors: ``{"type": "error", "error": {"type": ..., "message": ...}}``.

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
]


class ErrorDetail(msgspec.Struct, kw_only=True):
    type: ErrorType
    message: str


class ErrorResponse(msgspec.Struct, kw_only=True):
    type: Literal["error"] = "error"
    error: ErrorDetail
