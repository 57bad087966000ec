"""OpenAI's Responses API: the request, the Response object, its items and its stream events.

Shapes follow the openai SDK's types (openai/types/responses/). Request items are read
leniently (a message item may omit ``type``, as the SDK's EasyInputMessage does); what is
stored and answered is the normalised, tagged form, which is also valid input again (a
response's output items are the next turn's input, as OpenAI allows).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# --- content parts --------------------------------------------------------------------------


class InputText(msgspec.Struct, tag="input_text", tag_field="type", kw_only=True):
    text: str


class OutputText(msgspec.Struct, tag="output_text", tag_field="type", kw_only=True):
    text: str
    annotations: list[Any] = []


class InputImage(msgspec.Struct, tag="input_image", tag_field="type", kw_only=True):
    image_url: str | None = None
    file_id: str | None = None
    detail: str = "auto"


class InputFile(msgspec.Struct, tag="input_file", tag_field="type", kw_only=True):
    file_id: str | None = None
    file_url: str | None = None
    file_data: str | None = None
    filename: str | None = None


class Refusal(msgspec.Struct, tag="refusal", tag_field="type", kw_only=True):
    refusal: str


ContentPart = InputText | OutputText | InputImage | InputFile | Refusal

# --- items as stored and answered -----------------------------------------------------------

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class MessageItem(msgspec.Struct, tag="message", tag_field="type", kw_only=True):
    id: str
    role: Literal["user", "system", "developer", "assistant"]
    content: list[ContentPart]
    status: ItemStatus = "completed"


class FunctionCallItem(msgspec.Struct, tag="function_call", tag_field="type", kw_only=True):
    id: str
    call_id: str
    name: str
    arguments: str
    status: ItemStatus = "completed"


class FunctionCallOutputItem(msgspec.Struct, tag="function_call_output", tag_field="type", kw_only=True):
    id: str
    call_id: str
    output: str
    status: ItemStatus = "completed"


ConversationItem = MessageItem | FunctionCallItem | FunctionCallOutputItem
OutputItem = MessageItem | FunctionCallItem

# --- the request ----------------------------------------------------------------------------


class InputItem(msgspec.Struct, kw_only=True):
    """One item of ``input`` as clients send it: a message (``type`` may be left out), a
    function call the model made earlier, or the output of one."""

    type: Literal["message", "function_call", "function_call_output"] = "message"
    id: str | None = None
    status: str | None = None
    role: Literal["user", "system", "developer", "assistant"] | None = None
    content: str | list[ContentPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ContentPart] | None = None


class FunctionTool(msgspec.Struct, kw_only=True):
    type: Literal["function"] = "function"
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionToolChoice(msgspec.Struct, kw_only=True):
    type: Literal["function"] = "function"
    name: str


ToolChoice = Literal["none", "auto", "required"] | FunctionToolChoice


class TextFormat(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    # json_schema only.
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct, kw_only=True):
    format: TextFormat = msgspec.field(default_factory=lambda: TextFormat(type="text"))


class ResponseRequest(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    stream: bool = False
    store: bool = True
    metadata: dict[str, str] | None = None
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # Runs in the background are not offered: refused when true.
    background: bool | None = None


# --- the Response object --------------------------------------------------------------------


class InputTokensDetails(msgspec.Struct, kw_only=True):
    # No prompt cache is reported: both are always 0.
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(msgspec.Struct, kw_only=True):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(msgspec.Struct, kw_only=True):
    code: str
    message: str


ResponseStatus = Literal["in_progress", "completed", "incomplete", "failed"]


class Response(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: ResponseStatus
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = []
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: ToolChoice = "auto"
    tools: list[FunctionTool] = []
    text: TextConfig = msgspec.field(default_factory=TextConfig)
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    metadata: dict[str, str] = {}
    store: bool = True
    user: str | None = None


class DeletedResponse(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True


class InputItemList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[ConversationItem]
    first_id: str | None
    last_id: str | None
    has_more: bool


# --- stream events (each names its type, and carries a sequence number from 0) ---------------


class LifecycleEvent(msgspec.Struct, kw_only=True):
    """response.created, response.in_progress, response.completed, response.incomplete."""

    type: str
    sequence_number: int
    response: Response


class OutputItemEvent(msgspec.Struct, kw_only=True):
    """response.output_item.added and response.output_item.done."""

    type: str
    sequence_number: int
    output_index: int
    item: OutputItem


class ContentPartEvent(msgspec.Struct, kw_only=True):
    """response.content_part.added and response.content_part.done."""

    type: str
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class TextDeltaEvent(msgspec.Struct, kw_only=True):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = []


class TextDoneEvent(msgspec.Struct, kw_only=True):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = []


class ArgumentsDeltaEvent(msgspec.Struct, kw_only=True):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    sequence_number: int
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(msgspec.Struct, kw_only=True):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    sequence_number: int
    item_id: str
    output_index: int
    name: str
    arguments: str


class ErrorEvent(msgspec.Struct, kw_only=True):
    type: Literal["error"] = "error"
    sequence_number: int
    code: str | None
    message: str
    param: str | None


StreamEvent = (
    LifecycleEvent
    | OutputItemEvent
    | ContentPartEvent
    | TextDeltaEvent
    | TextDoneEvent
    | ArgumentsDeltaEvent
    | ArgumentsDoneEvent
    | ErrorEvent
)
