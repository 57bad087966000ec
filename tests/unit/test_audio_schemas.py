"""Every string the audio routes take has a ceiling in its schema (schemas/limits.py), so no
route reads, echoes or hands on an unbounded text."""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from schemas.openai.speech import SpeechRequest
from schemas.openai.transcriptions import TranscriptionRequest, TranslationRequest
from schemas.v3.speech import Txt2SpeechBody


def unbounded_strings(kind: Any, path: str, seen: set[type]) -> list[str]:
    """The paths of ``kind``'s strings (and lists) without a max_length."""
    if isinstance(kind, mi.StrType):
        return [] if kind.max_length is not None else [path]
    if isinstance(kind, mi.ListType):
        # /v3 texts: no blank text, and audio.max_speech_chars for all of them, bound their count.
        own = [] if kind.max_length is not None or path.endswith("texts") else [f"{path}[]"]
        return own + unbounded_strings(kind.item_type, f"{path}[]", seen)
    if isinstance(kind, mi.UnionType):
        return [found for member in kind.types for found in unbounded_strings(member, path, seen)]
    if isinstance(kind, mi.StructType):
        if kind.cls in seen:
            return []
        seen.add(kind.cls)
        return [
            found
            for field in kind.fields
            for found in unbounded_strings(field.type, f"{path}.{field.name}".lstrip("."), seen)
        ]
    return []


@pytest.mark.parametrize("schema", [SpeechRequest, Txt2SpeechBody, TranscriptionRequest, TranslationRequest])
def test_every_audio_string_is_bounded(schema: type[msgspec.Struct]) -> None:
    # Txt2SpeechBody.extra is the /v3 tasks' common part, bounded with the other task schemas.
    found = [path for path in unbounded_strings(mi.type_info(schema), "", set()) if not path.startswith("extra")]
    assert found == []
