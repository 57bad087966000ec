"""A T5 (SentencePiece Unigram) tokenizer over single characters, built offline for the tiny
Wan and LTX demo models: every printable ASCII character is one piece, so any prompt encodes
without a vocabulary download, and the tokenizer saves and loads like a real T5 one."""

from __future__ import annotations

from typing import Any

# T5's special pieces keep their usual ids: pad 0, eos 1, unk 2.
_SPECIAL = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
# Unigram scores: a word-start piece ("▁a") is preferred to "▁" followed by "a".
_WORD_START_SCORE = -1.0
_CHAR_SCORE = -2.0


def t5_char_tokenizer(max_length: int) -> Any:
    """A T5TokenizerFast whose pieces are single characters (and "▁" + character); `max_length`
    is the model_max_length the pipelines pad and truncate prompts to."""
    from transformers import T5TokenizerFast

    chars = [chr(code) for code in range(ord("!"), ord("~") + 1)]
    vocab = [*_SPECIAL, ("▁", _CHAR_SCORE)]
    vocab += [("▁" + char, _WORD_START_SCORE) for char in chars]
    vocab += [(char, _CHAR_SCORE) for char in chars]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)
