from __future__ import annotations

from typing import Any

import msgspec

from schemas.constraints import SamplingSeed, TokenId, TokenIdKey, TruncatePromptTokens


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(msgspec.Struct, kw_only=True):
    error: ErrorDetail


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class PromptLogprob(msgspec.Struct, kw_only=True):
    """One token at one prompt position, in vLLM's prompt_logprobs (keyed by token id)."""

    logprob: float
    rank: int | None = None
    decoded_token: str


# One prompt position: the prompt's own token and the likeliest alternatives, by token id
# (a JSON key); None for the first position, which has no logprob.
PromptLogprobs = list[dict[str, PromptLogprob] | None]


class TopLogprob(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = []


class StructuredOutputs(msgspec.Struct, kw_only=True):
    """vLLM's ``structured_outputs``: one constraint on what is generated (the newer name of
    the guided_* fields)."""

    json: Any = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    disable_any_whitespace: bool = False


class SamplingExtras(msgspec.Struct, kw_only=True):
    """vLLM's sampling extras, which the openai SDK sends through ``extra_body``."""

    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[TokenId] | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    guided_json: Any = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    structured_outputs: StructuredOutputs | None = None
    truncate_prompt_tokens: TruncatePromptTokens | None = None
    # The prompt's own logprobs, with this many alternatives at each position (not streamed).
    prompt_logprobs: int | None = None
    # prompt_token_ids on the answer, token_ids on each choice.
    return_token_ids: bool | None = None
    # Logprob tokens as "token_id:N", for tokens that are no text of their own.
    return_tokens_as_token_ids: bool | None = None


class SamplingRequest(SamplingExtras, kw_only=True):
    """The sampling fields chat and completions requests share."""

    model: str
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: SamplingSeed | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[TokenIdKey, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
