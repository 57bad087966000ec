"""POST /v3/async/txt2speech (Novita's text to speech; the result lists one audio per text)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.constraints import NOT_BLANK, AudioName, refusal
from schemas.limits import (
    MAX_SPEECH_SPEED,
    MAX_SPEECH_TEXT_CHARS,
    MAX_SPEECH_VOLUME,
    MIN_SPEECH_SPEED,
    MIN_SPEECH_VOLUME,
)
from schemas.v3.common import CommonExtra


class Txt2SpeechRequest(msgspec.Struct, kw_only=True):
    # Novita's voices are Emily, James, Olivia, Michael, Sarah and John; a model's catalog entry
    # maps them (and any other names it offers) to its speakers.
    voice_id: AudioName
    # A BCP 47 code such as "en-US", "zh-CN", "ja-JP"; the model must speak it.
    language: AudioName
    # Each text is spoken into its own audio file. A text's refusal names the list (request.texts).
    # Blank texts are refused here, so the count of texts is bounded by audio.max_speech_chars
    # (the characters of all texts together), checked before any work.
    texts: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=MAX_SPEECH_TEXT_CHARS, pattern=NOT_BLANK)]],
        msgspec.Meta(min_length=1, extra=refusal(at_field=True)),
    ]
    volume: Annotated[float, msgspec.Meta(ge=MIN_SPEECH_VOLUME, le=MAX_SPEECH_VOLUME)] = 1.0  # gain
    speed: Annotated[float, msgspec.Meta(ge=MIN_SPEECH_SPEED, le=MAX_SPEECH_SPEED)] = 1.0


class Txt2SpeechExtra(CommonExtra, kw_only=True):
    response_audio_type: Literal["wav", "mp3"] = "wav"


class Txt2SpeechBody(msgspec.Struct, kw_only=True):
    request: Txt2SpeechRequest
    extra: Txt2SpeechExtra = msgspec.field(default_factory=Txt2SpeechExtra)
