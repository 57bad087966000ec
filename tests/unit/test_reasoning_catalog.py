"""A catalog's reasoning_parser is checked against vLLM's registry when the catalog is read."""

from __future__ import annotations

import pytest

from engines.base import ModelKind, ModelSpec
from engines.registry import CatalogError, ModelRegistry, vllm_factory


def registry(**fields: object) -> ModelRegistry:
    spec = ModelSpec(name="r1", kind=fields.pop("kind", ModelKind.CHAT), path="/models/r1", **fields)  # type: ignore[arg-type]
    return ModelRegistry([spec], {"vllm": vllm_factory(cpu_threads=0)})


@pytest.mark.parametrize("name", ["deepseek_r1", "qwen3"])
def test_a_parser_vllm_knows_is_accepted(name: str) -> None:
    engine = registry(reasoning_parser=name).get("r1")
    assert engine is not None and engine.spec.reasoning_parser == name


def test_a_misspelt_parser_fails_at_load_and_lists_the_known_ones() -> None:
    with pytest.raises(CatalogError) as caught:
        registry(reasoning_parser="deepseek-r1")
    message = str(caught.value)
    assert "model r1" in message and "'deepseek-r1'" in message
    assert "deepseek_r1" in message and "qwen3" in message


def test_a_reasoning_parser_on_a_model_that_does_not_chat_is_refused() -> None:
    with pytest.raises(CatalogError, match="chat models only"):
        registry(kind=ModelKind.EMBEDDING, reasoning_parser="deepseek_r1")


def test_a_model_without_one_needs_no_check() -> None:
    assert registry().get("r1") is not None
