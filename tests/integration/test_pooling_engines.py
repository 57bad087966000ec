"""Embeddings and rerank on the real vLLM pooling runner, checked against the reference libraries."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from engines.scheduler import Scheduler
from schemas.errors import ApiError
from schemas.openai.embeddings import EmbeddingRequest
from schemas.openai.rerank import RerankRequest, ScoreRequest
from server.capabilities.text import TextCapability

pytestmark = pytest.mark.integration

TEXTS = ["The cat sat on the mat.", "Stock markets fell sharply today.", "A kitten rests on a rug."]


def reference_embeddings(path: str) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return np.asarray(SentenceTransformer(path, device="cpu").encode(TEXTS, normalize_embeddings=True))


async def test_embeddings_match_sentence_transformers(services: TextCapability, scheduler: Scheduler) -> None:
    response = await services.embeddings.create(EmbeddingRequest(model="demo-embed", input=TEXTS))
    vectors = np.asarray([item.embedding for item in response.data])
    expected = reference_embeddings(scheduler.engine("demo-embed").spec.path)
    assert np.max(np.abs(vectors - expected)) < 1e-5
    # Meaningful weights: the paraphrase is nearer than the unrelated sentence.
    assert vectors[0] @ vectors[2] > vectors[0] @ vectors[1]


async def test_base64_encoding_is_little_endian_float32(services: TextCapability) -> None:
    floats = await services.embeddings.create(EmbeddingRequest(model="demo-embed", input="hello"))
    encoded = await services.embeddings.create(
        EmbeddingRequest(model="demo-embed", input="hello", encoding_format="base64")
    )
    decoded = np.frombuffer(base64.b64decode(encoded.data[0].embedding), dtype="<f4")  # type: ignore[arg-type]
    assert np.allclose(decoded, floats.data[0].embedding, atol=0)


async def test_token_id_input_and_length_limit(services: TextCapability) -> None:
    response = await services.embeddings.create(EmbeddingRequest(model="demo-embed", input=[101, 7592, 102]))
    assert len(response.data[0].embedding) == 384
    with pytest.raises(ApiError) as caught:
        await services.embeddings.create(EmbeddingRequest(model="demo-embed", input="word " * 400))
    assert "256" in caught.value.message


async def test_rerank_matches_the_cross_encoder_run_directly(services: TextCapability, scheduler: Scheduler) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    documents = ["the river flows to the sea", "bread and cheese", "rivers and the sea"]
    response = await services.rerank.rerank(
        RerankRequest(model="demo-rerank", query="where does the river go", documents=documents, top_n=2)
    )
    path = scheduler.engine("demo-rerank").spec.path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        batch = tokenizer(["where does the river go"] * 3, documents, return_tensors="pt", padding=True)
        expected = torch.sigmoid(model(**batch).logits[:, 0]).tolist()
    order = sorted(range(3), key=lambda i: expected[i], reverse=True)[:2]
    assert [result.index for result in response.results] == order
    for result in response.results:
        assert abs(result.relevance_score - expected[result.index]) < 1e-5
        assert result.document is not None and result.document.text == documents[result.index]


async def test_score_pairs(services: TextCapability) -> None:
    response = await services.rerank.score(ScoreRequest(model="demo-rerank", text_1="query", text_2=["a", "b c"]))
    assert [item.index for item in response.data] == [0, 1]
    assert all(0 < item.score < 1 for item in response.data)


@pytest.mark.parametrize("route", ["rerank", "score"])
async def test_a_query_longer_than_the_context_is_refused_naming_the_limit(
    services: TextCapability, route: str
) -> None:
    query = "word " * 600  # 600 tokens: past the demo reranker's 512
    with pytest.raises(ApiError) as caught:
        if route == "rerank":
            await services.rerank.rerank(RerankRequest(model="demo-rerank", query=query, documents=["a"]))
        else:
            await services.rerank.score(ScoreRequest(model="demo-rerank", text_1=query, text_2=["a"]))
    assert caught.value.status == 400
    assert caught.value.param == ("query" if route == "rerank" else "text_1")
    assert "maximum context length is 512 tokens" in caught.value.message


async def test_classify_gives_the_one_label_probability_of_the_cross_encoder(services: TextCapability) -> None:
    from schemas.openai.pooling import ClassifyRequest, PoolingRequest

    classified = await services.pooling.classify(ClassifyRequest(model="demo-rerank", input=["the sea", "a desk"]))
    assert [(item.num_classes, item.label) for item in classified.data] == [(1, "LABEL_0"), (1, "LABEL_0")]
    assert all(0 < item.probs[0] < 1 for item in classified.data)
    assert classified.usage.prompt_tokens == classified.usage.total_tokens > 0
    pooled = await services.pooling.pool(PoolingRequest(model="demo-rerank", input=["the sea", "a desk"]))
    assert [item.data for item in pooled.data] == [item.probs for item in classified.data]
    embedded = await services.pooling.pool(PoolingRequest(model="demo-embed", input="the sea"))
    assert len(embedded.data[0].data) == 384
