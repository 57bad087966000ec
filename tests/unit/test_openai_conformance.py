"""OpenAI and vLLM server conformance of the text routes, through the real app on fake engines:
what a client written against either server sends, and what it reads back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

CHAT: dict[str, Any] = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
COMPLETION: dict[str, Any] = {"model": "fake-chat", "prompt": "hi", "max_tokens": 3}


def refusal(response: Any) -> tuple[int, str | None]:
    return response.status_code, response.json()["error"]["param"]


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 10**30])
@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
async def test_a_seed_outside_int64_is_refused_naming_seed(
    client: AsyncTestClient, path: str, body: dict[str, Any], seed: int
) -> None:
    assert refusal(await client.post(path, json={**body, "seed": seed})) == (400, "seed")


@pytest.mark.parametrize("seed", [2**63 - 1, -(2**63), 0])
async def test_a_seed_inside_int64_is_taken(client: AsyncTestClient, seed: int) -> None:
    assert (await client.post("/v1/chat/completions", json={**CHAT, "seed": seed})).status_code == 200


async def test_rerank_and_score_usage_count_prompt_tokens(client: AsyncTestClient) -> None:
    rerank = await client.post("/v1/rerank", json={"model": "fake-rerank", "query": "a b", "documents": ["a", "c d"]})
    score = await client.post("/v1/score", json={"model": "fake-rerank", "text_1": "a b", "text_2": ["a", "c d"]})
    for response in (rerank, score):
        usage = response.json()["usage"]
        assert usage == {"prompt_tokens": 4 + 6, "total_tokens": 4 + 6}  # the fake counts characters


@pytest.mark.parametrize("stream", [False, True])
async def test_completion_top_logprobs_include_the_sampled_token(client: AsyncTestClient, stream: bool) -> None:
    body = {**COMPLETION, "logprobs": 2, "stream": stream}
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == 200
    if stream:
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: {")]
        tops = [
            top
            for event in events
            for choice in json.loads(event)["choices"]
            for top in choice["logprobs"]["top_logprobs"]
        ]
    else:
        tops = response.json()["choices"][0]["logprobs"]["top_logprobs"]
    # The fake ranks "0" and "1" above the sampled token: logprobs + 1 entries, as OpenAI's.
    assert tops == [
        {"0": -0.5, "1": -0.51, "a": -1.0},
        {"0": -0.5, "1": -0.51, "b": -1.0},
        {"0": -0.5, "1": -0.51, "a": -1.0},
    ]


async def test_echoed_prompt_top_logprobs_include_the_prompt_token(client: AsyncTestClient) -> None:
    body = {**COMPLETION, "logprobs": 1, "echo": True, "max_tokens": 1}
    logprobs = (await client.post("/v1/completions", json=body)).json()["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["h", "i", "a"]
    assert logprobs["top_logprobs"] == [None, {"0": -0.5, "i": -1.0}, {"0": -0.5, "a": -1.0}]


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
async def test_stream_options_without_streaming_are_refused(
    client: AsyncTestClient, path: str, body: dict[str, Any]
) -> None:
    response = await client.post(path, json={**body, "stream_options": {"include_usage": True}})
    assert refusal(response) == (400, "stream_options")
    streamed = await client.post(path, json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.status_code == 200


def stream_chunks(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
async def test_streamed_choices_come_one_per_chunk(client: AsyncTestClient, path: str, body: dict[str, Any]) -> None:
    chunks = stream_chunks(await client.post(path, json={**body, "stream": True, "n": 3}))
    assert all(len(chunk["choices"]) == 1 for chunk in chunks)
    assert {chunk["choices"][0]["index"] for chunk in chunks} == {0, 1, 2}


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
async def test_continuous_usage_stats_put_usage_on_every_chunk(
    client: AsyncTestClient, path: str, body: dict[str, Any]
) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    chunks = stream_chunks(await client.post(path, json={**body, "stream": True, "stream_options": options}))
    prompt = chunks[-1]["usage"]["prompt_tokens"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    running = [chunk["usage"]["completion_tokens"] for chunk in chunks[:-1]]
    # Chat opens with a role chunk before any token.
    assert running == ([0, 1, 2, 3] if "messages" in body else [1, 2, 3])
    assert all(chunk["usage"]["prompt_tokens"] == prompt for chunk in chunks)
    plain = stream_chunks(
        await client.post(path, json={**body, "stream": True, "stream_options": {"include_usage": True}})
    )
    assert all(chunk["usage"] is None for chunk in plain[:-1])


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
NAMED = {"type": "function", "function": {"name": "lookup"}}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_named_tool_call_cut_by_max_tokens_finishes_with_length(client: AsyncTestClient, stream: bool) -> None:
    body = {**CHAT, "tools": TOOLS, "tool_choice": NAMED, "stream": stream}  # the fake writes "aba": no JSON
    response = await client.post("/v1/chat/completions", json=body)
    if stream:
        reasons = [c["choices"][0]["finish_reason"] for c in stream_chunks(response) if c["choices"]]
        assert [reason for reason in reasons if reason] == ["length"]
    else:
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "length"
        assert choice["message"]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": "aba"}


async def test_tokenize_renders_the_tools_as_chat_does(client: AsyncTestClient) -> None:
    chat = await client.post("/v1/chat/completions", json={**CHAT, "tools": TOOLS, "tool_choice": NAMED})
    counted = await client.post(
        "/v1/tokenize", json={"model": "fake-chat", "messages": CHAT["messages"], "tools": TOOLS}
    )
    without_tools = await client.post("/v1/tokenize", json={"model": "fake-chat", "messages": CHAT["messages"]})
    assert counted.json()["count"] == chat.json()["usage"]["prompt_tokens"]
    assert counted.json()["count"] > without_tools.json()["count"]


CONTINUED = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Once upon"}]


async def test_continue_final_message_leaves_the_last_message_open(client: AsyncTestClient) -> None:
    body = {"model": "fake-chat", "messages": CONTINUED}
    opened = await client.post("/v1/tokenize", json=body)
    continued = await client.post("/v1/tokenize", json={**body, "continue_final_message": True})
    detokenized = await client.post("/v1/detokenize", json={"model": "fake-chat", "tokens": continued.json()["tokens"]})
    assert detokenized.json()["prompt"] == "user:hi\nassistant:Once upon"
    assert opened.json()["count"] == continued.json()["count"] + len("\nassistant:")
    chat = await client.post("/v1/chat/completions", json={**CHAT, **body, "continue_final_message": True})
    assert chat.json()["usage"]["prompt_tokens"] == continued.json()["count"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/tokenize"])
async def test_continue_final_message_with_add_generation_prompt_is_refused(client: AsyncTestClient, path: str) -> None:
    body = {**CHAT, "messages": CONTINUED, "continue_final_message": True, "add_generation_prompt": True}
    assert refusal(await client.post(path, json=body)) == (400, "continue_final_message")


async def test_add_generation_prompt_false_opens_no_turn(client: AsyncTestClient) -> None:
    with_turn = await client.post("/v1/chat/completions", json=CHAT)
    without = await client.post("/v1/chat/completions", json={**CHAT, "add_generation_prompt": False})
    prompt_tokens = with_turn.json()["usage"]["prompt_tokens"]
    assert without.json()["usage"]["prompt_tokens"] == prompt_tokens - len("assistant:")


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_echo_prepends_the_assistant_message(client: AsyncTestClient, stream: bool) -> None:
    body = {**CHAT, "messages": CONTINUED, "continue_final_message": True, "echo": True, "n": 2, "stream": stream}
    response = await client.post("/v1/chat/completions", json=body)
    if stream:
        content = {0: "", 1: ""}
        for chunk in stream_chunks(response):
            for choice in chunk["choices"]:
                content[choice["index"]] += choice["delta"].get("content", "")
        assert content == {0: "Once uponaba", 1: "Once uponaba"}
    else:
        assert [choice["message"]["content"] for choice in response.json()["choices"]] == ["Once uponaba"] * 2


async def test_chat_echo_of_a_user_message_after_a_generation_prompt_is_nothing(client: AsyncTestClient) -> None:
    response = await client.post("/v1/chat/completions", json={**CHAT, "echo": True})
    assert response.json()["choices"][0]["message"]["content"] == "aba"


def chat_engine(client: AsyncTestClient) -> Any:
    return client.app_state.scheduler.engine("fake-chat")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("structured", "field", "value"),
    [
        ({"json": {"type": "object"}}, "json_schema", {"type": "object"}),
        ({"regex": "[ab]+"}, "regex", "[ab]+"),
        ({"choice": ["x", "y"]}, "choice", ["x", "y"]),
        ({"grammar": 'root ::= "a"'}, "grammar", 'root ::= "a"'),
        ({"json_object": True}, "json_object", True),
    ],
)
@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
async def test_structured_outputs_set_the_engine_constraint(
    client: AsyncTestClient, path: str, body: dict[str, Any], structured: dict[str, Any], field: str, value: Any
) -> None:
    response = await client.post(path, json={**body, "structured_outputs": structured})
    assert response.status_code == 200, response.text
    assert getattr(chat_engine(client).last_options, field) == value


@pytest.mark.parametrize(
    "extra",
    [
        {"structured_outputs": {}},
        {"structured_outputs": {"regex": "a", "choice": ["a"]}},
        {"structured_outputs": {"structural_tag": "{}"}},
        {"structured_outputs": {"regex": "a"}, "guided_choice": ["a"]},
    ],
)
async def test_structured_outputs_hold_one_supported_constraint(client: AsyncTestClient, extra: dict[str, Any]) -> None:
    assert refusal(await client.post("/v1/completions", json={**COMPLETION, **extra})) == (400, "structured_outputs")


async def test_structured_outputs_beside_response_format_are_refused(client: AsyncTestClient) -> None:
    body = {**CHAT, "structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}}
    assert refusal(await client.post("/v1/chat/completions", json=body)) == (400, "response_format")


@pytest.mark.parametrize(
    ("left", "right"), [("text_1", "text_2"), ("queries", "documents"), ("queries", "items"), ("data_1", "data_2")]
)
async def test_score_takes_each_of_vllms_field_pairs(client: AsyncTestClient, left: str, right: str) -> None:
    response = await client.post("/v1/score", json={"model": "fake-rerank", left: "a b", right: ["a", "c d", "b a"]})
    assert response.status_code == 200, response.text
    assert [item["score"] for item in response.json()["data"]] == [0.1, 0.0, 0.2]


@pytest.mark.parametrize(
    "fields",
    [
        {"text_1": "a"},
        {"text_1": "a", "documents": ["b"]},
        {"text_1": "a", "text_2": "b", "queries": "a", "documents": "b"},
    ],
)
async def test_score_refuses_anything_but_one_pair(client: AsyncTestClient, fields: dict[str, Any]) -> None:
    assert refusal(await client.post("/v1/score", json={"model": "fake-rerank", **fields})) == (400, "text_1")


async def test_truncate_prompt_tokens_keeps_the_last_tokens(client: AsyncTestClient) -> None:
    body = {**COMPLETION, "prompt": "abcdefgh", "echo": True, "truncate_prompt_tokens": 3}
    completion = (await client.post("/v1/completions", json=body)).json()
    assert completion["usage"]["prompt_tokens"] == 3
    assert completion["choices"][0]["text"] == "fgh" + "aba"
    chat = await client.post("/v1/chat/completions", json={**CHAT, "truncate_prompt_tokens": 4})
    assert chat.json()["usage"]["prompt_tokens"] == 4
    embedding = await client.post(
        "/v1/embeddings", json={"model": "fake-embed", "input": "x" * 100, "truncate_prompt_tokens": -1}
    )
    assert embedding.json()["usage"]["prompt_tokens"] == 64  # the fakes' context length
    # Without it, the same input is past the context: refused.
    assert (await client.post("/v1/embeddings", json={"model": "fake-embed", "input": "x" * 100})).status_code == 400


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", COMPLETION),
        ("/v1/embeddings", {"model": "fake-embed", "input": "a"}),
    ],
)
async def test_truncate_prompt_tokens_past_the_context_is_refused(
    client: AsyncTestClient, path: str, body: dict[str, Any]
) -> None:
    assert refusal(await client.post(path, json={**body, "truncate_prompt_tokens": 65})) == (
        400,
        "truncate_prompt_tokens",
    )
    assert refusal(await client.post(path, json={**body, "truncate_prompt_tokens": -2})) == (
        400,
        "truncate_prompt_tokens",
    )


async def test_return_token_ids_on_chat(client: AsyncTestClient) -> None:
    tokenized = await client.post("/v1/tokenize", json={"model": "fake-chat", "messages": CHAT["messages"]})
    answer = (await client.post("/v1/chat/completions", json={**CHAT, "return_token_ids": True, "n": 2})).json()
    assert answer["prompt_token_ids"] == tokenized.json()["tokens"]
    assert [choice["token_ids"] for choice in answer["choices"]] == [[97, 98, 97]] * 2
    chunks = stream_chunks(
        await client.post("/v1/chat/completions", json={**CHAT, "return_token_ids": True, "stream": True})
    )
    assert chunks[0]["prompt_token_ids"] == tokenized.json()["tokens"]
    assert [id for chunk in chunks for id in chunk["choices"][0]["token_ids"] or []] == [97, 98, 97]
    plain = (await client.post("/v1/chat/completions", json=CHAT)).json()
    assert plain["prompt_token_ids"] is None and plain["choices"][0]["token_ids"] is None


@pytest.mark.parametrize("stream", [False, True])
async def test_return_token_ids_on_completions(client: AsyncTestClient, stream: bool) -> None:
    body = {**COMPLETION, "prompt": ["hi", "yo"], "return_token_ids": True, "stream": stream}
    response = await client.post("/v1/completions", json=body)
    if stream:
        prompts: dict[int, Any] = {}
        outputs: dict[int, list[int]] = {0: [], 1: []}
        for chunk in stream_chunks(response):
            for choice in chunk["choices"]:
                prompts.setdefault(choice["index"], choice["prompt_token_ids"])
                outputs[choice["index"]] += choice["token_ids"]
        assert prompts == {0: [104, 105], 1: [121, 111]}
        assert outputs == {0: [97, 98, 97], 1: [97, 98, 97]}
    else:
        choices = response.json()["choices"]
        assert [choice["prompt_token_ids"] for choice in choices] == [[104, 105], [121, 111]]
        assert [choice["token_ids"] for choice in choices] == [[97, 98, 97]] * 2


async def test_return_tokens_as_token_ids(client: AsyncTestClient) -> None:
    body = {**CHAT, "logprobs": True, "top_logprobs": 1, "return_tokens_as_token_ids": True, "max_tokens": 1}
    entry = (await client.post("/v1/chat/completions", json=body)).json()["choices"][0]["logprobs"]["content"][0]
    assert entry["token"] == "token_id:97" and entry["bytes"] == list(b"token_id:97")
    assert [top["token"] for top in entry["top_logprobs"]] == ["token_id:48"]
    body = {**COMPLETION, "logprobs": 1, "echo": True, "return_tokens_as_token_ids": True, "max_tokens": 1}
    logprobs = (await client.post("/v1/completions", json=body)).json()["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["token_id:104", "token_id:105", "token_id:97"]
    assert logprobs["top_logprobs"][2] == {"token_id:48": -0.5, "token_id:97": -1.0}


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
async def test_prompt_logprobs(client: AsyncTestClient, path: str, body: dict[str, Any]) -> None:
    answer = (await client.post(path, json={**body, "prompt_logprobs": 1})).json()
    prompt_logprobs = answer["prompt_logprobs"] if "messages" in body else answer["choices"][0]["prompt_logprobs"]
    assert prompt_logprobs[0] is None
    # The fake ranks the prompt's own token after its alternatives.
    assert prompt_logprobs[1] == {
        "105" if "prompt" in body else str(ord("s")): {
            "logprob": -1.0,
            "rank": 2,
            "decoded_token": "i" if "prompt" in body else "s",
        },
        "48": {"logprob": -0.5, "rank": 1, "decoded_token": "0"},
    }
    streamed = await client.post(path, json={**body, "prompt_logprobs": 1, "stream": True})
    assert refusal(streamed) == (400, "prompt_logprobs")


async def test_classify_answers_vllms_shape(client: AsyncTestClient) -> None:
    response = await client.post("/v1/classify", json={"model": "fake-rerank", "input": ["ab", "abcd"]})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "list" and answer["id"].startswith("classify-")
    assert answer["data"] == [
        {"index": 0, "label": "short", "probs": [0.5, 0.5], "num_classes": 2},
        {"index": 1, "label": "long", "probs": [0.25, 0.75], "num_classes": 2},
    ]
    assert answer["usage"] == {"prompt_tokens": 6, "completion_tokens": 0, "total_tokens": 6}


async def test_classify_needs_a_classifier(client: AsyncTestClient) -> None:
    response = await client.post("/v1/classify", json={"model": "fake-embed", "input": "ab"})
    assert refusal(response) == (400, "model")


async def test_pooling_pools_each_models_own_task(client: AsyncTestClient) -> None:
    embedded = await client.post("/v1/embeddings", json={"model": "fake-embed", "input": "abc"})
    pooled = await client.post("/v1/pooling", json={"model": "fake-embed", "input": "abc"})
    assert pooled.status_code == 200, pooled.text
    assert pooled.json()["data"] == [{"index": 0, "data": embedded.json()["data"][0]["embedding"], "object": "pooling"}]
    classified = await client.post("/v1/pooling", json={"model": "fake-rerank", "input": "abcd", "task": "classify"})
    assert classified.json()["data"][0]["data"] == [0.25, 0.75]
    based = await client.post("/v1/pooling", json={"model": "fake-embed", "input": "abc", "encoding_format": "base64"})
    assert isinstance(based.json()["data"][0]["data"], str)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "fake-chat", "input": "a"}, "model"),
        ({"model": "fake-embed", "input": "a", "task": "classify"}, "task"),
        ({"model": "fake-rerank", "input": "x" * 100}, "input"),
    ],
)
async def test_pooling_refusals(client: AsyncTestClient, body: dict[str, Any], param: str) -> None:
    assert refusal(await client.post("/v1/pooling", json=body)) == (400, param)
