"""Embeddings and cross-encoder scores on vLLM's pooling runner."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from engines.base import ClassifyResult, EmbeddingResult, ScoreResult
from engines.errors import EngineFailure, InvalidJob
from engines.llm.runtime import VllmEngineBase

log = logging.getLogger("omniserve.engines.vllm")


class _PoolingEngine(VllmEngineBase):
    async def load(self) -> None:
        await self._start(runner="pooling")

    async def _pool(self, prompt: Any, params: Any, request_id: str) -> Any:
        """Run one pooling request to completion; cancelling this aborts it in the engine."""
        from vllm.exceptions import VLLMClientError

        result = None
        try:
            async for output in self.llm.encode(prompt, params, request_id):
                result = output
        except VLLMClientError as exc:
            raise InvalidJob(str(exc)) from exc
        except asyncio.CancelledError:
            await self.abort(request_id)
            raise
        except Exception as exc:
            log.exception("pooling failed for %s", self.spec.name)
            raise EngineFailure(self.spec.name) from exc
        if result is None:
            raise EngineFailure(self.spec.name)
        return result

    async def _pool_all(self, items: list[tuple[Any, Any]], request_id: str) -> list[Any]:
        # Submit every input at once so vLLM batches them in the same engine steps.
        tasks = [
            asyncio.ensure_future(self._pool(prompt, params, f"{request_id}-{i}"))
            for i, (prompt, params) in enumerate(items)
        ]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise


class VllmEmbeddingEngine(_PoolingEngine):
    """Implements ``EmbeddingEngine``."""

    async def load(self) -> None:
        await super().load()
        await self.embed([self.tokenize("warm up")], f"warmup-{self.spec.name}")

    async def embed(self, inputs: list[list[int]], request_id: str) -> EmbeddingResult:
        from vllm import PoolingParams
        from vllm.inputs.engine import tokens_input

        params = PoolingParams(task="embed")
        outputs = await self._pool_all([(tokens_input(ids), params) for ids in inputs], request_id)
        vectors = [output.outputs.data.tolist() for output in outputs]
        return EmbeddingResult(vectors=vectors, prompt_tokens=sum(len(ids) for ids in inputs))


class VllmScoreEngine(_PoolingEngine):
    """Implements ``ScoreEngine`` with a cross-encoder (sequence classification, one label)."""

    async def load(self) -> None:
        await super().load()
        await self.score([("warm", "up")], f"warmup-{self.spec.name}")

    def _pair_prompt(self, query: str, document: str) -> tuple[list[int], int]:
        limit = self.info.max_model_len
        # Only the document is cut to fit; a query that fills the context alone cannot be
        # scored (the tokenizer raises a bare Exception on it), and is the caller's fault.
        query_tokens = len(self.tokenizer(query, add_special_tokens=False)["input_ids"])
        room = limit - self.tokenizer.num_special_tokens_to_add(pair=True)
        if query_tokens >= room:
            raise InvalidJob(
                f"This model's maximum context length is {limit} tokens, but the query has {query_tokens} "
                f"tokens: a query may have at most {room - 1}, to leave room for the special tokens and "
                "the document.",
                "query",
            )
        encoded = self.tokenizer(query, text_pair=document, truncation="only_second", max_length=limit)
        ids = list(encoded["input_ids"])
        type_ids = encoded.get("token_type_ids")
        # vLLM takes BERT's segment ids compressed to where the second segment starts.
        second_start = type_ids.index(1) if type_ids and 1 in type_ids else len(ids)
        return ids, second_start

    async def score(self, pairs: list[tuple[str, str]], request_id: str) -> ScoreResult:
        from vllm import PoolingParams
        from vllm.inputs.engine import tokens_input

        items = []
        prompt_tokens = 0
        for query, document in pairs:
            ids, second_start = self._pair_prompt(query, document)
            prompt_tokens += len(ids)
            params = PoolingParams(task="classify", extra_kwargs={"compressed_token_type_ids": second_start})
            items.append((tokens_input(ids), params))
        outputs = await self._pool_all(items, request_id)
        scores = [float(output.outputs.data.reshape(-1)[0]) for output in outputs]
        return ScoreResult(scores=scores, prompt_tokens=prompt_tokens)

    async def classify(self, inputs: list[list[int]], request_id: str) -> ClassifyResult:
        from vllm import PoolingParams
        from vllm.inputs.engine import tokens_input

        params = PoolingParams(task="classify")
        outputs = await self._pool_all([(tokens_input(ids), params) for ids in inputs], request_id)
        probs = [[float(value) for value in output.outputs.data.reshape(-1).tolist()] for output in outputs]
        # The model's own class names (transformers' LABEL_<n> where it names none).
        id2label = getattr(self.llm.model_config.hf_config, "id2label", None) or {}
        labels = [str(id2label.get(index, f"LABEL_{index}")) for index in range(len(probs[0]) if probs else 0)]
        return ClassifyResult(probs=probs, labels=labels, prompt_tokens=sum(len(ids) for ids in inputs))
