"""Reasoning ("thinking") output: the part of a reasoning model's text between its
markers (``<think>…</think>`` and the like) is split off from the answer by vLLM's
reasoning parser for that model family (``ReasoningParserManager``)."""

from __future__ import annotations

from typing import Any

import msgspec

from engines.errors import InvalidJob


def known_reasoning_parsers() -> list[str]:
    from vllm.reasoning import ReasoningParserManager

    return ReasoningParserManager.list_registered()


def check_reasoning_parser(name: str) -> str | None:
    """Why ``name`` is not one of vLLM's reasoning parsers, or None when it is. Checked when
    the catalog is read, so that a typo fails at start rather than at the first request."""
    known = known_reasoning_parsers()
    if name in known:
        return None
    return f"reasoning_parser {name!r} is not one of vLLM's: {', '.join(known)}"


class ReasoningSplit(msgspec.Struct, kw_only=True):
    """One streamed delta split in two: the reasoning, and what follows it (the answer,
    which a tool-call parser may read next), with the answer's token ids."""

    reasoning: str | None = None
    content: str = ""
    content_ids: list[int] = []


class ReasoningParser:
    """Wraps one of vLLM's reasoning parser classes for one model's tokenizer."""

    def __init__(self, parser_name: str, tokenizer: Any) -> None:
        from vllm.reasoning import ReasoningParserManager

        self._parser_cls = ReasoningParserManager.get_reasoning_parser(parser_name)
        self._tokenizer = tokenizer

    def check(self) -> None:
        """Builds the parser once, so that a tokenizer without its markers fails the load
        rather than every request."""
        self._parser_cls(self._tokenizer)

    def start(self, request: dict[str, Any], prompt_ids: list[int]) -> ReasoningSession:
        """A session for one choice of one request (streaming parsers keep state)."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        from engines.llm.tools import without_nulls

        try:
            vllm_request: Any = ChatCompletionRequest.model_validate(without_nulls(request))
        except ValueError:
            # A body omniserve takes that vLLM's model does not: the parsers read only the
            # thinking switches from it, so those are what is kept.
            kept = {key: request[key] for key in ("model", "chat_template_kwargs") if request.get(key) is not None}
            vllm_request = ChatCompletionRequest.model_validate({"messages": [], **kept})
        kwargs: dict[str, Any] = {}
        if vllm_request.chat_template_kwargs:
            # Some parsers follow a per-request thinking switch (e.g. enable_thinking).
            kwargs["chat_template_kwargs"] = vllm_request.chat_template_kwargs
        try:
            parser = self._parser_cls(self._tokenizer, **kwargs)
        except RuntimeError as exc:  # the tokenizer lacks the parser's markers
            raise InvalidJob(f"The model's reasoning parser cannot run: {exc}") from exc
        return ReasoningSession(parser, parser.adjust_request(vllm_request), prompt_ids)


class ReasoningSession:
    """Splits one choice's output; the streaming half mirrors vLLM's own serving
    (vllm/parser/abstract_parser.py ``parse_delta``)."""

    def __init__(self, parser: Any, request: Any, prompt_ids: list[int]) -> None:
        self._parser = parser
        self._request = request
        self._text = ""
        self._token_ids: list[int] = []
        # A template may open (or close) the reasoning block itself, in the prompt.
        self._ended = bool(parser.is_reasoning_end(prompt_ids))
        if not self._ended:
            parser.adjust_initial_state_from_prompt(prompt_ids)

    @property
    def _engine_based(self) -> bool:
        return bool(getattr(self._parser, "engine_based_streaming", False))

    def extract(self, text: str) -> tuple[str | None, str | None]:
        """(reasoning, content) of a complete output."""
        reasoning, content = self._parser.extract_reasoning(text, self._request)
        return reasoning, content

    def split_delta(self, delta_text: str, delta_ids: list[int], *, finished: bool) -> ReasoningSplit:
        if self._ended:
            return ReasoningSplit(content=delta_text, content_ids=delta_ids)
        previous_text, previous_ids = self._text, self._token_ids
        self._text, self._token_ids = previous_text + delta_text, previous_ids + delta_ids
        message = self._parser.extract_reasoning_streaming(
            previous_text, self._text, delta_text, previous_ids, self._token_ids, delta_ids
        )
        reasoning = message.reasoning if message is not None else None
        content = (message.content if message is not None else None) or ""
        content_ids = delta_ids
        if self._engine_based:
            ended = bool(self._parser.has_engine_confirmed_reasoning_end())
        else:
            ended = bool(self._parser.is_reasoning_end_streaming(self._token_ids, delta_ids))
        if ended:
            self._ended = True
            content_ids = list(self._parser.extract_content_ids(delta_ids))
        if self._engine_based and (ended or finished):
            # Engine-based parsers hold back text around their markers until told to flush.
            flushed = self._parser.finish_streaming()
            if flushed is not None:
                content += flushed.content or ""
                if flushed.reasoning:
                    reasoning = (reasoning or "") + flushed.reasoning
        return ReasoningSplit(reasoning=reasoning or None, content=content, content_ids=content_ids)
