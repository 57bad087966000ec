"""Token ids a client sends (detokenize, prompts and inputs as ids, logit_bias keys, stop ids):
refused with a 400 naming the id, in the schema past 32 bits and against the model's own
vocabulary below that, before a tokenizer or an engine sees them. The app is real; the
engines are the fakes, whose vocabulary is every code point (FAKE_VOCAB_SIZE ids)."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from engines.llm.runtime import vocab_size
from tests.fakes import FAKE_VOCAB_SIZE

CHAT: dict[str, Any] = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COMPLETION: dict[str, Any] = {"model": "fake-chat", "prompt": "hi", "max_tokens": 2}
# Ids no 32-bit token id reaches (a real tokenizer raises OverflowError on them), negative ones,
# and the first id past the fake model's vocabulary.
OUT_OF_RANGE = [-1, -(2**63) - 1, 2**31, 2**63, 2**64, 10**40, FAKE_VOCAB_SIZE]


def refusal(response: Any) -> tuple[int, str, str | None]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["param"]


@pytest.mark.parametrize("token", OUT_OF_RANGE)
async def test_detokenize_refuses_an_id_outside_the_vocabulary(client: AsyncTestClient, token: int) -> None:
    response = await client.post("/v1/detokenize", json={"model": "fake-chat", "tokens": [104, token, 105]})
    assert refusal(response) == (400, "INVALID_REQUEST_BODY", "tokens[1]")


async def test_detokenize_names_the_vocabulary_it_checked(client: AsyncTestClient) -> None:
    response = await client.post("/v1/detokenize", json={"model": "fake-chat", "tokens": [FAKE_VOCAB_SIZE]})
    assert f"0 to {FAKE_VOCAB_SIZE - 1}" in response.json()["error"]["message"]


async def test_detokenize_takes_every_id_of_the_vocabulary(client: AsyncTestClient) -> None:
    response = await client.post("/v1/detokenize", json={"model": "fake-chat", "tokens": [0, 104, FAKE_VOCAB_SIZE - 1]})
    assert response.status_code == 200
    assert response.json()["prompt"] == "\x00h\U0010ffff"


@pytest.mark.parametrize("token", OUT_OF_RANGE)
@pytest.mark.parametrize(
    ("prompt", "param"),
    [(lambda t: [104, t], "prompt[1]"), (lambda t: [[104], [105, t]], "prompt[1][1]")],
    ids=["ids", "lists of ids"],
)
async def test_completion_prompt_ids_outside_the_vocabulary_are_refused(
    client: AsyncTestClient, token: int, prompt: Any, param: str
) -> None:
    response = await client.post("/v1/completions", json={**COMPLETION, "prompt": prompt(token), "echo": True})
    assert refusal(response) == (400, "INVALID_REQUEST_BODY", param)


async def test_completion_prompt_ids_in_the_vocabulary_are_echoed(client: AsyncTestClient) -> None:
    response = await client.post("/v1/completions", json={**COMPLETION, "prompt": [104, 105], "echo": True})
    assert response.status_code == 200
    assert response.json()["choices"][0]["text"].startswith("hi")


@pytest.mark.parametrize("token", OUT_OF_RANGE)
async def test_embedding_input_ids_outside_the_vocabulary_are_refused(client: AsyncTestClient, token: int) -> None:
    response = await client.post("/v1/embeddings", json={"model": "fake-embed", "input": [[104], [105, token]]})
    assert refusal(response) == (400, "INVALID_REQUEST_BODY", "input[1][1]")


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize(
    "key",
    [
        "-1",
        " 97",
        "97\n",
        "+97",
        "1_0",
        "\u0661\u0662\u0668",
        "\uff11",
        "0x61",
        "",
        "1" * 11,
        str(2**64),
        "1e3",
        "\u00b2",
    ],
)
async def test_logit_bias_keys_must_be_token_ids(client: AsyncTestClient, route: str, key: str) -> None:
    body = CHAT if "chat" in route else COMPLETION
    response = await client.post(route, json={**body, "logit_bias": {"97": 1, key: 1}})
    assert refusal(response) == (400, "INVALID_REQUEST_BODY", "logit_bias")


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
async def test_logit_bias_keys_past_the_vocabulary_are_refused(client: AsyncTestClient, route: str) -> None:
    body = CHAT if "chat" in route else COMPLETION
    response = await client.post(route, json={**body, "logit_bias": {"97": 1, str(FAKE_VOCAB_SIZE): 1}})
    assert refusal(response) == (400, "INVALID_REQUEST_BODY", "logit_bias")
    assert f"0 to {FAKE_VOCAB_SIZE - 1}" in response.json()["error"]["message"]


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
async def test_logit_bias_takes_ids_of_the_vocabulary(client: AsyncTestClient, route: str) -> None:
    body = CHAT if "chat" in route else COMPLETION
    response = await client.post(route, json={**body, "logit_bias": {"0": 1, str(FAKE_VOCAB_SIZE - 1): -1}})
    assert response.status_code == 200


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("token", OUT_OF_RANGE)
async def test_stop_token_ids_outside_the_vocabulary_are_refused(
    client: AsyncTestClient, route: str, token: int
) -> None:
    body = CHAT if "chat" in route else COMPLETION
    response = await client.post(route, json={**body, "stop_token_ids": [2, token]})
    assert refusal(response) == (400, "INVALID_REQUEST_BODY", "stop_token_ids[1]")


def test_a_vllm_models_vocabulary_is_what_its_tokenizer_or_its_embedding_knows() -> None:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    )

    class Config:
        def __init__(self, embedding_rows: int) -> None:
            self.embedding_rows = embedding_rows

        def get_vocab_size(self) -> int:
            return self.embedding_rows

    class Llm:
        def __init__(self, embedding_rows: int) -> None:
            self.model_config = Config(embedding_rows)

    assert vocab_size(Llm(64), tokenizer) == 64  # type: ignore[arg-type]  # a padded embedding
    assert vocab_size(Llm(2), tokenizer) == 3  # type: ignore[arg-type]  # tokens the embedding lacks
    tokenizer.add_tokens(["<extra>"])
    assert vocab_size(Llm(2), tokenizer) == 4  # type: ignore[arg-type]
