"""Anthropic's request onto the chat capability's, and a finished turn back onto a message.

The field table: ``system`` -> a system message; ``text`` blocks -> message text (joined with
newlines, as the OpenAI route joins text parts); ``tool_use`` blocks -> the assistant's tool
calls; ``tool_result`` blocks -> tool messages; ``tools[].input_schema`` -> the function's
parameters; ``tool_choice`` auto / any / tool / none -> "auto" / "required" / the named
function / "none" (``disable_parallel_tool_use`` -> ``parallel_tool_calls`` false);
``stop_sequences`` -> ``stop``; ``metadata.user_id`` -> ``user``; ``output_config.format``
(a JSON schema) -> ``response_format`` json_schema. Images are refused, as the
OpenAI route refuses image parts: no model served here reads them. A final assistant message
(Anthropic's prefill, which the answer continues) is refused: templates cannot continue it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from schemas.anthropic.messages import (
    ContentBlock,
    ImageBlock,
    InputMessage,
    Message,
    MessageInputs,
    MessagesRequest,
    MessageUsage,
    StopReason,
    TextBlock,
    TextContent,
    ToolChoice,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseContent,
)
from schemas.errors import ApiError
from schemas.openai.chat import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    FunctionDefinition,
    JsonSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    Tool,
    ToolCall,
)
from server.capabilities.calls import WireNames
from server.capabilities.text.chat_turns import TurnResult, call_input
from server.errors import bad_request

# The chat capability's field names that Anthropic names otherwise.
ANTHROPIC_NAMES = WireNames(
    {"stop": "stop_sequences", "max_completion_tokens": "max_tokens", "response_format": "output_config.format"}
)

IMAGES_REFUSED = "This model accepts text content only; image blocks are not supported."


def anthropic_id(prefix: str) -> str:
    """Anthropic's id shapes: ``msg_...``, ``toolu_...``."""
    return f"{prefix}_{os.urandom(12).hex()}"


def renamed(error: ApiError) -> ApiError:
    """A refusal from the chat capability, naming the field as Anthropic's clients sent it."""
    if error.param is not None:
        error.param = ANTHROPIC_NAMES(error.param)
    return error


def _texts(blocks: list[Any], param: str) -> str:
    texts = []
    for block in blocks:
        if isinstance(block, ImageBlock):
            raise bad_request(IMAGES_REFUSED, param)
        texts.append(block.text)
    return "\n".join(texts)


def _tool_result(block: ToolResultBlock, param: str) -> ChatMessage:
    content = block.content
    text = _texts(content, f"{param}.content") if isinstance(content, list) else content or ""
    return ChatMessage(role="tool", tool_call_id=block.tool_use_id, content=text)


def _chat_messages(message: InputMessage, position: int) -> list[ChatMessage]:
    """One Anthropic message as chat messages: its tool results first (each a tool message),
    then its text and tool calls."""
    if isinstance(message.content, str):
        return [ChatMessage(role=message.role, content=message.content)]
    results: list[ChatMessage] = []
    texts: list[str] = []
    calls: list[ToolCall] = []
    for index, block in enumerate(message.content):
        param = f"messages[{position}].content[{index}]"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ImageBlock):
            raise bad_request(IMAGES_REFUSED, param)
        elif isinstance(block, ToolUseBlock):
            if message.role != "assistant":
                raise bad_request("tool_use blocks belong to assistant messages.", param)
            calls.append(
                ToolCall(id=block.id, function=FunctionCall(name=block.name, arguments=json.dumps(block.input)))
            )
        else:
            if message.role != "user":
                raise bad_request("tool_result blocks belong to user messages.", param)
            results.append(_tool_result(block, param))
    chat: list[ChatMessage] = results
    if texts or calls or not results:
        chat.append(ChatMessage(role=message.role, content="\n".join(texts), tool_calls=calls or None))
    return chat


def _tool_choice(choice: ToolChoice | None, has_tools: bool) -> tuple[Any, bool | None]:
    """The chat capability's tool_choice and parallel_tool_calls."""
    if choice is None:
        return None, None
    if not has_tools and not isinstance(choice, ToolChoiceNone | ToolChoiceAuto):
        raise bad_request("tool_choice names tools, but the request has none.", "tool_choice")
    if isinstance(choice, ToolChoiceNone):
        return "none", None
    parallel = False if choice.disable_parallel_tool_use else None
    if isinstance(choice, ToolChoiceAuto):
        return "auto", parallel
    if isinstance(choice, ToolChoiceAny):
        return "required", parallel
    assert isinstance(choice, ToolChoiceTool)
    return NamedToolChoice(function=NamedFunction(name=choice.name)), parallel


def chat_request(body: MessageInputs) -> ChatCompletionRequest:
    """The chat request for an Anthropic body (a count_tokens body has no sampling fields)."""
    messages: list[ChatMessage] = []
    if isinstance(body.system, str):
        messages.append(ChatMessage(role="system", content=body.system))
    elif body.system:
        messages.append(ChatMessage(role="system", content=_texts(body.system, "system")))
    for position, message in enumerate(body.messages):
        messages.extend(_chat_messages(message, position))
    tools = [
        Tool(function=FunctionDefinition(name=tool.name, description=tool.description, parameters=tool.input_schema))
        for tool in body.tools or []
    ]
    tool_choice, parallel = _tool_choice(body.tool_choice, bool(tools))
    output_format = body.output_config.format if body.output_config else None
    request = ChatCompletionRequest(
        model=body.model,
        messages=messages,
        tools=tools or None,
        tool_choice=None if not tools else tool_choice,
        parallel_tool_calls=parallel,
        response_format=None
        if output_format is None
        else ResponseFormat(type="json_schema", json_schema=JsonSchemaFormat(schema=output_format.schema)),
    )
    if isinstance(body, MessagesRequest):
        if body.messages and body.messages[-1].role == "assistant":
            # Anthropic continues a final assistant message (a prefill); the chat templates
            # here can only close it and start a new turn, which would answer something else.
            raise bad_request(
                "A final assistant message (prefill) is not supported: end with a user message.",
                f"messages[{len(body.messages) - 1}]",
            )
        request.max_tokens = body.max_tokens
        request.stop = body.stop_sequences or None
        request.temperature = body.temperature
        request.top_p = body.top_p
        request.top_k = body.top_k
        request.stream = body.stream
        request.user = body.metadata.user_id if body.metadata else None
    return request


def stop_reason(finish_reason: str | None, stop_string: str | None, called_tools: bool) -> StopReason | None:
    """Anthropic's stop_reason for the engine's finish. A turn cut at max_tokens says so,
    even in the middle of a tool call."""
    if finish_reason == "length":
        return "max_tokens"
    if called_tools:
        return "tool_use"
    if stop_string is not None:
        return "stop_sequence"
    return "end_turn" if finish_reason is not None else None


def message(result: TurnResult, model: str) -> Message:
    content: list[ContentBlock] = []
    if result.text:
        content.append(TextContent(text=result.text))
    for call in result.tool_calls:
        arguments = call_input(call.function.arguments)
        if arguments is not None:  # a call cut at max_tokens has no input to report
            content.append(ToolUseContent(id=anthropic_id("toolu"), name=call.function.name, input=arguments))
    reason = stop_reason(result.finish_reason, result.stop_string, any(isinstance(b, ToolUseContent) for b in content))
    return Message(
        id=anthropic_id("msg"),
        content=content,
        model=model,
        stop_reason=reason,
        stop_sequence=result.stop_string if reason == "stop_sequence" else None,
        usage=MessageUsage(input_tokens=result.prompt_tokens, output_tokens=result.completion_tokens),
    )
