"""Weighted prompt encoding (engines/image/prompt_encoding.py) on a tiny random CLIP text encoder:
the same embeddings as compel's own weighting, with work linear in the prompt's length."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engines.errors import InvalidJob
from engines.image.demo import _clip_tokenizer, _text_config
from engines.image.pipelines import MAX_PROMPT_CHUNKS, _compel_provider, parse_emphasis
from engines.image.prompt_encoding import encode_weighted, split_points


@pytest.fixture(scope="module")
def provider() -> Any:
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer()
    encoder = CLIPTextModel(_text_config(tokenizer)).eval()
    provider_class = _compel_provider()
    assert provider_class is not None, "compel is a dependency of the image engines"
    return provider_class(tokenizer, encoder, None, skip=0, normalize=True)


def _compel(provider: Any, text: str) -> Any:
    runs = parse_emphasis(text)
    with torch.no_grad():
        return provider.get_embeddings_for_weighted_prompt_fragments(
            [[t for t, _ in runs]], [[w for _, w in runs]], device="cpu"
        )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a cat",
        "(a red apple:1.3) on a [wooden] table, blurry",
        # Several windows (the demo tokenizer makes one token of each character), split after
        # sentences, phrases or words, with down-weighted fragments across the splits.
        "masterpiece, (a red apple:1.2) on a [wooden] table. blurry, lowres, bad hands, " * 3,
        "[" + "word " * 40 + "]" + " tail (x:0.2) " * 8,
        "no punctuation at all here " * 12 + "(faded:0.4) end",
        "unbroken" * 40,
    ],
)
def test_the_embeddings_are_compels(provider: Any, text: str) -> None:
    expected = _compel(provider, text)
    found = encode_weighted(provider, parse_emphasis(text), device="cpu", max_chunks=64, field="prompt")
    assert found.shape == expected.shape
    torch.testing.assert_close(found, expected, atol=1e-5, rtol=1e-5)


def test_split_points_follow_sentences_then_phrases_then_words() -> None:
    window = 10
    sentence = ["a", ".</w>", "c", ",</w>", "e</w>", "f", "g", "h", "i", "j", "k", "l</w>"]
    assert split_points(sentence, window) == [(0, 2), (2, 12)]  # after the last sentence end in the window
    phrase = ["a", ",</w>", "c", "d</w>", "e", "f", "g", "h", "i", "j", "k"]
    assert split_points(phrase, window) == [(0, 2), (2, 11)]
    words = ["a", "b</w>", "c", "d</w>", "e", "f", "g", "h", "i", "j", "k"]
    assert split_points(words, window) == [(0, 4), (4, 11)]
    unbroken = ["a"] * 25
    assert split_points(unbroken, window) == [(0, 10), (10, 20), (20, 25)]
    assert split_points([], window) == [(0, 0)]


def test_a_long_allowed_prompt_is_encoded_in_bounded_chunks(provider: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt of the default limit (4096 characters) with a down-weighted fragment every few
    words: each chunk is encoded once, plus once for each fragment in it; the tokens are turned
    back into text once (compel does it once per chunk, for every remaining token)."""
    text = ("red apple, [wooden] table. " * 160)[:4096]
    runs = parse_emphasis(text)
    fragments = sum(1 for _, weight in runs if weight < 1)
    rows: list[int] = []
    conversions: list[int] = []
    encode = provider._encode_token_ids_to_embeddings
    convert = provider.tokenizer.convert_ids_to_tokens

    def counting_encode(ids: Any, mask: Any = None) -> Any:
        rows.append(ids.shape[0])
        return encode(ids, mask)

    def counting_convert(ids: Any, *args: Any, **kwargs: Any) -> Any:
        conversions.append(len(ids))
        return convert(ids, *args, **kwargs)

    monkeypatch.setattr(provider, "_encode_token_ids_to_embeddings", counting_encode)
    monkeypatch.setattr(provider.tokenizer, "convert_ids_to_tokens", counting_convert)
    embeddings = encode_weighted(provider, runs, device="cpu", max_chunks=MAX_PROMPT_CHUNKS, field="negative_prompt")
    chunks = embeddings.shape[1] // 77
    assert chunks > 40  # a token for each character but spaces, 75 a window, split where words end
    # Each chunk once, and each down-weighted fragment once per chunk it spans (at most two).
    assert sum(rows) <= chunks + 2 * fragments
    assert fragments * chunks > 20 * sum(rows)  # what compel's weighting would run
    assert len(conversions) == 1


def test_a_prompt_over_the_chunk_limit_is_refused_before_encoding(
    provider: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*_: Any, **__: Any) -> Any:
        raise AssertionError("nothing is encoded for a refused prompt")

    monkeypatch.setattr(provider, "_encode_token_ids_to_embeddings", never)
    with pytest.raises(InvalidJob) as refused:
        encode_weighted(provider, [("x" * (4 * 75 + 1), 1.0)], device="cpu", max_chunks=4, field="negative_prompt")
    assert refused.value.field == "negative_prompt"
    assert "at most 300" in refused.value.message
