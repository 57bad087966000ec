"""Tool calls: forced calls through structured output, free-form ("auto") calls through
the model's own tool-call format, parsed by vLLM's parser for that format."""

from __future__ import annotations

import json
from typing import Any

from engines.errors import InvalidJob

EMPTY_OBJECT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def forced_tool_schema(tools: list[dict[str, Any]], tool_choice: Any, parallel: bool | None) -> dict[str, Any] | None:
    """The JSON schema that makes the model emit exactly the call(s) ``tool_choice`` demands.

    Named choice: the arguments object of that function. "required": an array of
    ``{"name", "parameters"}`` objects, one per call. Otherwise None.
    """
    if isinstance(tool_choice, dict):
        name = tool_choice.get("function", {}).get("name")
        for tool in tools:
            if tool["function"]["name"] == name:
                return tool["function"].get("parameters") or EMPTY_OBJECT_SCHEMA
        raise InvalidJob(f"tool_choice names '{name}', which is not among the tools.", "tool_choice")
    if tool_choice == "required":
        schema: dict[str, Any] = {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "anyOf": [
                    {
                        "properties": {
                            "name": {"type": "string", "enum": [tool["function"]["name"]]},
                            "parameters": tool["function"].get("parameters") or EMPTY_OBJECT_SCHEMA,
                        },
                        "required": ["name", "parameters"],
                    }
                    for tool in tools
                ],
            },
        }
        if parallel is False:
            schema["maxItems"] = 1
        return schema
    return None


def calls_from_forced_output(text: str, tool_choice: Any) -> list[tuple[str, str]]:
    """(name, arguments JSON) pairs from the output of a forced tool call."""
    if isinstance(tool_choice, dict):
        return [(tool_choice["function"]["name"], text)]
    try:
        items = json.loads(text)
    except ValueError:
        # Output cut at max_tokens: no complete call to report.
        return []
    return [(item["name"], json.dumps(item["parameters"])) for item in items]


def without_nulls(value: Any) -> Any:
    # vLLM's request model rejects explicit nulls for fields that are merely optional.
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


class ToolCallParser:
    """Wraps one of vLLM's tool parsers (``ToolParserManager``) for one request."""

    def __init__(self, parser_name: str, tokenizer: Any) -> None:
        from vllm.tool_parsers import ToolParserManager

        self._parser_cls = ToolParserManager.get_tool_parser(parser_name)
        self._tokenizer = tokenizer

    def start(self, request: dict[str, Any]) -> ToolCallSession:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        vllm_request: Any = ChatCompletionRequest.model_validate(without_nulls(request))
        parser = self._parser_cls(self._tokenizer, tools=vllm_request.tools)
        vllm_request = parser.adjust_request(vllm_request)
        return ToolCallSession(parser, vllm_request)


class ToolCallSession:
    def __init__(self, parser: Any, request: Any) -> None:
        self._parser = parser
        self._request = request
        self._text = ""
        self._token_ids: list[int] = []

    @property
    def skip_special_tokens(self) -> bool:
        # Some formats mark calls with special tokens the parser needs to see.
        return bool(self._request.skip_special_tokens)

    def extract(self, text: str) -> tuple[str | None, list[tuple[str, str]]]:
        info = self._parser.extract_tool_calls(text, self._request)
        if not info.tools_called:
            return text, []
        return info.content, [(call.function.name, call.function.arguments) for call in info.tool_calls]

    def extract_delta(self, delta_text: str, delta_ids: list[int]) -> dict[str, Any] | None:
        """A chat delta (``content`` and/or ``tool_calls``) for the new text, or None to hold it back."""
        previous_text, previous_ids = self._text, self._token_ids
        self._text = previous_text + delta_text
        self._token_ids = previous_ids + delta_ids
        message = self._parser.extract_tool_calls_streaming(
            previous_text, self._text, delta_text, previous_ids, self._token_ids, delta_ids, self._request
        )
        if message is None:
            return None
        result: dict[str, Any] = message.model_dump(exclude_none=True)
        return result
