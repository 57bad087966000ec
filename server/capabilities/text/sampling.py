"""Pieces shared by the text capability: ids, sampling options, context checks, input forms."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, TypeVar

from engines.base import EmbeddingEngine, SamplingOptions, ScoreEngine, TextGenerationEngine
from engines.workpools import WorkPool, run_in
from schemas.openai.common import SamplingRequest
from server.capabilities.text.structured import apply_structured_outputs
from server.capabilities.text.token_output import set_prompt_logprobs
from server.errors import bad_request

T = TypeVar("T")

MAX_TOP_LOGPROBS = 20


def new_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(12).hex()}"


def unix_now() -> int:
    return int(time.time())


def check_n(n: int, max_n: int) -> None:
    if not 1 <= n <= max_n:
        raise bad_request(f"n must be between 1 and {max_n}.", "n")


def check_stream_options(request: SamplingRequest) -> None:
    """stream_options steers a stream only; OpenAI and vLLM refuse it on a plain answer."""
    if request.stream_options is not None and not request.stream:
        raise bad_request("stream_options is allowed only when stream is true.", "stream_options")


def check_sequences(prompts: int, n: int, max_sequences: int, prompt_param: str = "prompt") -> int:
    """The sequences a request generates (prompts times n), or a 400 naming the field to cut."""
    sequences = prompts * n
    if sequences > max_sequences:
        param = prompt_param if prompts > max_sequences else "n"
        raise bad_request(
            f"This request would generate {sequences} sequences ({prompts} prompts x n={n}); "
            f"at most {max_sequences} are allowed per request.",
            param,
        )
    return sequences


def resolve_max_tokens(requested: int | None, prompt_tokens: int, max_model_len: int, param: str) -> int:
    """The generation budget, or a 400 that states the model's context limit."""
    if prompt_tokens >= max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens, "
            f"but the prompt has {prompt_tokens} tokens.",
            "messages" if param != "max_tokens" else "prompt",
        )
    room = max_model_len - prompt_tokens
    if requested is None:
        return room
    if requested < 1:
        raise bad_request(f"{param} must be at least 1.", param)
    if requested > room:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens: {prompt_tokens} in the prompt "
            f"leave room for at most {room} new tokens, but {param} is {requested}.",
            param,
        )
    return requested


def truncate_prompt(ids: list[int], keep: int | None, max_model_len: int) -> list[int]:
    """vLLM's truncate_prompt_tokens: the last ``keep`` tokens (-1: the model's context length)."""
    if keep is None:
        return ids
    if keep > max_model_len:
        raise bad_request(
            f"truncate_prompt_tokens is {keep}, more than this model's maximum context length "
            f"of {max_model_len} tokens.",
            "truncate_prompt_tokens",
        )
    keep = max_model_len if keep == -1 else keep
    return ids[-keep:] if keep else []


def split_inputs(raw: str | list[Any], param: str, max_items: int) -> list[str | list[int]]:
    """A prompt/input field as a list of texts or token-id lists (OpenAI's four forms)."""
    items: list[Any]
    if isinstance(raw, str):
        items = [raw]
    elif raw and all(isinstance(item, int) for item in raw):
        items = [list(raw)]
    elif all(isinstance(item, str) for item in raw) or all(isinstance(item, list) for item in raw):
        items = list(raw)
    else:
        raise bad_request(f"{param} must be a string, a list of strings, token ids, or lists of token ids.", param)
    if not items or len(items) > max_items:
        raise bad_request(f"{param} must hold between 1 and {max_items} items.", param)
    return items


def check_token_ids(ids: Iterable[int], vocab_size: int, param: str) -> None:
    """Token ids a client sent, each one of the model's vocabulary; else a 400 naming the first
    that is not (``param[index]``). A tokenizer given an id outside its vocabulary fails (an
    id past 32 bits overflows it) or reads memory it does not own; the engine would refuse it."""
    for index, token in enumerate(ids):
        if not 0 <= token < vocab_size:
            raise bad_request(
                f"{param}[{index}] is {token}, which is not a token id of this model: "
                f"its vocabulary holds the ids 0 to {vocab_size - 1}.",
                f"{param}[{index}]",
            )


def check_input_ids(raw: str | list[Any], vocab_size: int, param: str) -> None:
    """The token ids in a prompt/input field (one list of ids, or a list of them), each an id
    of the model's vocabulary; a 400 names the first that is not (``prompt[1][5]``)."""
    if isinstance(raw, str):
        return
    if all(isinstance(item, int) for item in raw):
        check_token_ids(raw, vocab_size, param)
        return
    for position, item in enumerate(raw):
        if isinstance(item, list):
            check_token_ids(item, vocab_size, f"{param}[{position}]")


async def token_ids(
    engine: TextGenerationEngine | EmbeddingEngine | ScoreEngine, items: list[str | list[int]]
) -> list[list[int]]:
    """Each item as token ids. Texts are tokenized on the engine pool: a batch of long
    texts keeps a CPU busy for a while, which the event loop must not wait out."""

    def tokenize_all() -> list[list[int]]:
        return [engine.tokenize(item) if isinstance(item, str) else list(item) for item in items]

    return await run_in(WorkPool.ENGINE, tokenize_all)


def normalize_stop(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def sampling_options(
    request: SamplingRequest,
    *,
    max_tokens: int,
    logprobs: int | None,
    vocab_size: int,
    adapter: str | None = None,
) -> SamplingOptions:
    """The engine's options for a request; token ids in them (stop_token_ids, logit_bias) must
    be ids of the model's vocabulary of ``vocab_size`` ids. ``adapter``: the LoRA adapter the
    request names as its model (the scheduler leases the model it adapts)."""
    check_token_ids(request.stop_token_ids or (), vocab_size, "stop_token_ids")
    options = SamplingOptions(
        n=request.n,
        max_tokens=max_tokens,
        adapter=adapter,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        min_p=request.min_p,
        seed=request.seed,
        stop=normalize_stop(request.stop),
        stop_token_ids=request.stop_token_ids or [],
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        repetition_penalty=request.repetition_penalty,
        logprobs=logprobs,
        min_tokens=request.min_tokens or 0,
        ignore_eos=bool(request.ignore_eos),
        skip_special_tokens=True if request.skip_special_tokens is None else request.skip_special_tokens,
        include_stop_str_in_output=bool(request.include_stop_str_in_output),
        json_schema=request.guided_json,
        regex=request.guided_regex,
        choice=request.guided_choice,
    )
    set_prompt_logprobs(request, options)
    if request.structured_outputs is not None:
        apply_structured_outputs(request.structured_outputs, options)
    if request.logit_bias:
        options.logit_bias = {}
        for key, bias in request.logit_bias.items():
            # The schema's pattern (TokenIdKey) lets a final newline through, as a regex's $ does.
            token = int(key) if key.isascii() and key.isdigit() else -1
            if not 0 <= token < vocab_size:
                raise bad_request(
                    f"logit_bias names {key!r}, which is not a token id of this model: "
                    f"its vocabulary holds the ids 0 to {vocab_size - 1}.",
                    "logit_bias",
                )
            options.logit_bias[token] = bias
    if logprobs is not None and not 0 <= logprobs <= MAX_TOP_LOGPROBS:
        raise bad_request(f"At most {MAX_TOP_LOGPROBS} top logprobs may be requested.", "top_logprobs")
    return options


async def merge_streams(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Interleave several async iterators as items arrive, tagging each with its source index.

    Closing the merged iterator (or cancelling its consumer) cancels every source.
    """
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None, bool]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await queue.put((index, item, None, False))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            await queue.put((index, None, exc, True))
            return
        await queue.put((index, None, None, True))

    tasks = [asyncio.ensure_future(pump(i, stream)) for i, stream in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            index, item, error, done = await queue.get()
            if error is not None:
                raise error
            if done:
                remaining -= 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
