"""Responses API <-> chat: the field tables of the adapter, and nothing else.

A Responses request becomes a chat completion request (the chat capability then applies the
template, sampling, structured output and tool rules); the chat answer becomes output items.
The conversation is kept as Responses items, so that a stored response can be listed and
chained (``previous_response_id``) in the Responses shape.
"""

from __future__ import annotations

import secrets
from typing import Any

from schemas.openai.chat import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    FunctionDefinition,
    ImagePart,
    ImageUrl,
    JsonSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCall,
)
from schemas.openai.chat import ContentPart as ChatPart
from schemas.openai.common import StreamOptions
from schemas.openai.responses import (
    ContentPart,
    ConversationItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolChoice,
    InputFile,
    InputImage,
    InputItem,
    InputText,
    MessageItem,
    OutputItem,
    OutputText,
    Refusal,
    ResponseRequest,
)
from server.errors import bad_request


def new_item_id(prefix: str) -> str:
    """OpenAI's id style: a prefix and random hex (resp_, msg_, fc_, fco_)."""
    return f"{prefix}_{secrets.token_hex(16)}"


def _parts(content: str | list[ContentPart] | None, role: str, param: str) -> list[ContentPart]:
    if content is None:
        raise bad_request("A message item needs content.", param)
    if isinstance(content, str):
        return [OutputText(text=content) if role == "assistant" else InputText(text=content)]
    return content


def _text_output(output: str | list[ContentPart] | None, param: str) -> str:
    if output is None:
        raise bad_request("A function_call_output item needs output.", param)
    if isinstance(output, str):
        return output
    texts = []
    for part in output:
        if not isinstance(part, InputText | OutputText):
            raise bad_request("A function_call_output holds text only.", param)
        texts.append(part.text)
    return "".join(texts)


def normalised_items(request: ResponseRequest) -> list[ConversationItem]:
    """The request's ``input`` as tagged items with ids (``instructions`` are not among them:
    as at OpenAI, they hold for this response only and are not carried into a chain)."""
    if isinstance(request.input, str):
        return [MessageItem(id=new_item_id("msg"), role="user", content=[InputText(text=request.input)])]
    items: list[ConversationItem] = []
    for index, item in enumerate(request.input):
        param = f"input[{index}]"
        if item.type == "message":
            if item.role is None:
                raise bad_request("A message item needs a role.", param)
            items.append(
                MessageItem(
                    id=item.id or new_item_id("msg"), role=item.role, content=_parts(item.content, item.role, param)
                )
            )
        elif item.type == "function_call":
            if item.call_id is None or item.name is None or item.arguments is None:
                raise bad_request("A function_call item needs call_id, name and arguments.", param)
            items.append(
                FunctionCallItem(
                    id=item.id or new_item_id("fc"), call_id=item.call_id, name=item.name, arguments=item.arguments
                )
            )
        else:
            items.append(_call_output(item, param))
    return items


def _call_output(item: InputItem, param: str) -> FunctionCallOutputItem:
    if item.call_id is None:
        raise bad_request("A function_call_output item needs call_id.", param)
    return FunctionCallOutputItem(
        id=item.id or new_item_id("fco"), call_id=item.call_id, output=_text_output(item.output, param)
    )


def _chat_part(part: ContentPart) -> ChatPart:
    if isinstance(part, InputText | OutputText):
        return TextPart(text=part.text)
    if isinstance(part, Refusal):
        return TextPart(text=part.refusal)
    if isinstance(part, InputImage):
        if part.image_url is None:
            raise bad_request("input_image needs image_url; file ids are not offered.", "input")
        # The chat capability decides whether the model takes images (and refuses if not).
        return ImagePart(image_url=ImageUrl(url=part.image_url, detail=part.detail))
    assert isinstance(part, InputFile)
    raise bad_request("input_file parts are not offered.", "input")


def chat_messages(instructions: str | None, conversation: list[ConversationItem]) -> list[ChatMessage]:
    messages: list[ChatMessage] = []
    if instructions:
        messages.append(ChatMessage(role="system", content=instructions))
    for item in conversation:
        if isinstance(item, MessageItem):
            parts = [_chat_part(part) for part in item.content]
            single = len(parts) == 1 and isinstance(parts[0], TextPart)
            content: str | list[ChatPart] = parts[0].text if single else parts  # type: ignore[union-attr]
            messages.append(ChatMessage(role=item.role, content=content))
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments))
            last = messages[-1] if messages else None
            # Calls the model made together are one assistant turn, after any text it said.
            if last is not None and last.role == "assistant":
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                messages.append(ChatMessage(role="assistant", tool_calls=[call]))
        else:
            messages.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=item.output))
    return messages


def _response_format(request: ResponseRequest) -> ResponseFormat | None:
    if request.text is None or request.text.format.type == "text":
        return None
    fmt = request.text.format
    if fmt.type == "json_object":
        return ResponseFormat(type="json_object")
    if fmt.schema is None:
        raise bad_request("text.format json_schema needs a schema.", "text.format.schema")
    return ResponseFormat(
        type="json_schema",
        json_schema=JsonSchemaFormat(
            name=fmt.name or "response", description=fmt.description, schema=fmt.schema, strict=fmt.strict
        ),
    )


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, FunctionToolChoice):
        return NamedToolChoice(function=NamedFunction(name=choice.name))
    return choice


def chat_request(request: ResponseRequest, conversation: list[ConversationItem]) -> ChatCompletionRequest:
    """The chat completion request that answers ``request`` over ``conversation``."""
    if request.background:
        raise bad_request("background responses are not offered.", "background")
    tools = (
        [
            Tool(
                function=FunctionDefinition(
                    name=tool.name, description=tool.description, parameters=tool.parameters, strict=tool.strict
                )
            )
            for tool in request.tools
        ]
        if request.tools
        else None
    )
    return ChatCompletionRequest(
        model=request.model,
        messages=chat_messages(request.instructions, conversation),
        max_completion_tokens=request.max_output_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        response_format=_response_format(request),
        tools=tools,
        tool_choice=_tool_choice(request.tool_choice) if tools else None,
        parallel_tool_calls=request.parallel_tool_calls if tools else None,
        user=request.user,
        stream=request.stream,
        stream_options=StreamOptions(include_usage=True) if request.stream else None,
    )


def output_items(text: str | None, calls: list[tuple[str, str, str]], *, truncated: bool) -> list[OutputItem]:
    """The output of one answer: its text as a message (also when empty and nothing was
    called, so that a response always says something), then each call (call id, name,
    arguments) as a function_call item."""
    items: list[OutputItem] = []
    if text or not calls:
        items.append(
            MessageItem(
                id=new_item_id("msg"),
                role="assistant",
                content=[OutputText(text=text or "")],
                status="incomplete" if truncated else "completed",
            )
        )
    items.extend(
        FunctionCallItem(id=new_item_id("fc"), call_id=call_id, name=name, arguments=arguments)
        for call_id, name, arguments in calls
    )
    return items
