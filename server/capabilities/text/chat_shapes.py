"""Chat messages to and from the shapes around the engine: messages as templates take them,
logprobs, echo, and the finish reason of a tool call."""

from __future__ import annotations

import json
from typing import Any

from engines.base import TokenLogprobs
from schemas.openai.chat import ChatMessage, ChoiceLogprobs, TextPart
from schemas.openai.common import TokenLogprob, TopLogprob
from server.capabilities.text.token_output import as_token_ids
from server.errors import bad_request


def message_to_template(message: ChatMessage) -> dict[str, Any]:
    """A message as chat templates expect it: plain-string content, parsed tool arguments."""
    content = message.content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, TextPart):
                raise bad_request("This model accepts text content parts only.", "messages")
            texts.append(part.text)
        content = "\n".join(texts)
    rendered: dict[str, Any] = {"role": message.role, "content": content or ""}
    if message.name is not None:
        rendered["name"] = message.name
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        calls = []
        for call in message.tool_calls:
            try:
                arguments: Any = json.loads(call.function.arguments)
            except ValueError:
                arguments = call.function.arguments
            calls.append(
                {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}
            )
        rendered["tool_calls"] = calls
    return rendered


def echo_text(echo: bool, last: dict[str, Any], add_generation_prompt: bool) -> str:
    """vLLM's chat echo: the last message's content, when it is in the reply's role (the
    assistant's after a generation prompt; without one, the reply goes on in the last role)."""
    if not echo or (add_generation_prompt and last["role"] != "assistant"):
        return ""
    return str(last["content"])


def tool_calls_reason(reason: str | None) -> str | None:
    """The finish reason of a choice that called tools: "tool_calls", unless max_tokens cut
    it short; then "length", for its last call's arguments are no whole JSON."""
    return reason if reason == "length" else "tool_calls"


def to_openai_logprobs(entries: list[TokenLogprobs], as_ids: bool = False) -> ChoiceLogprobs:
    if as_ids:
        entries = as_token_ids(entries)
    return ChoiceLogprobs(
        content=[
            TokenLogprob(
                token=entry.token,
                logprob=entry.logprob,
                bytes=list(entry.token.encode()),
                top_logprobs=[
                    TopLogprob(token=top.token, logprob=top.logprob, bytes=list(top.token.encode()))
                    for top in entry.top
                ],
            )
            for entry in entries
        ]
    )
