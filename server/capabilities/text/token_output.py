"""vLLM's token-level extensions of chat and completions answers: prompt_logprobs, token ids
returned, and logprob tokens written as "token_id:N"."""

from __future__ import annotations

import msgspec

from engines.base import SamplingOptions, TokenChoice, TokenLogprobs
from schemas.openai.common import PromptLogprob, PromptLogprobs, SamplingRequest
from server.errors import bad_request

MAX_PROMPT_LOGPROBS = 20


def id_label(token_id: int) -> str:
    return f"token_id:{token_id}"


def set_prompt_logprobs(request: SamplingRequest, options: SamplingOptions) -> None:
    """Ask the engine for the prompt's logprobs (at least as many as ``options`` has)."""
    wanted = request.prompt_logprobs
    if wanted is None:
        return
    if request.stream:
        raise bad_request("prompt_logprobs are not available when streaming.", "prompt_logprobs")
    if not 0 <= wanted <= MAX_PROMPT_LOGPROBS:
        raise bad_request(f"prompt_logprobs must be between 0 and {MAX_PROMPT_LOGPROBS}.", "prompt_logprobs")
    options.prompt_logprobs = max(options.prompt_logprobs or 0, wanted)


def as_token_ids(entries: list[TokenLogprobs]) -> list[TokenLogprobs]:
    """Logprob entries with each token written as "token_id:N" (return_tokens_as_token_ids)."""
    return [
        msgspec.structs.replace(
            entry,
            token=id_label(entry.token_id),
            top=[
                TokenChoice(token=id_label(top.token_id), logprob=top.logprob, token_id=top.token_id)
                for top in entry.top
            ],
        )
        for entry in entries
    ]


def prompt_logprobs_out(entries: list[TokenLogprobs | None], top_n: int) -> PromptLogprobs:
    """vLLM's prompt_logprobs: at each position the prompt's token and ``top_n`` alternatives,
    keyed by token id."""
    out: PromptLogprobs = []
    for entry in entries:
        if entry is None:
            out.append(None)
            continue
        position = {
            str(entry.token_id): PromptLogprob(logprob=entry.logprob, rank=entry.rank, decoded_token=entry.token)
        }
        for rank, top in enumerate(entry.top[:top_n], start=1):
            position.setdefault(
                str(top.token_id), PromptLogprob(logprob=top.logprob, rank=rank, decoded_token=top.token)
            )
        out.append(position)
    return out
