"""POST /v3/async/txt2speech (Novita's text to speech; the result lists one audio per text)."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.v3.common import CommonExtra


class Txt2SpeechRequest(msgspec.Struct, kw_only=True):
    # Novita's voices are Emily, James, Olivia, Michael, Sarah and John; a model's catalog entry
    # maps them (and any other names it offers) to its speakers.
    voice_id: str
    # A BCP 47 code such as "en-US", "zh-CN", "ja-JP"; the model must speak it.
    language: str
    # Each text is spoken into its own audio file, at most 512 characters each.
    texts: list[str]
    volume: float = 1.0  # gain, 1.0 to 2.0
    speed: float = 1.0  # 0.8 to 3.0


class Txt2SpeechExtra(CommonExtra, kw_only=True):
    response_audio_type: Literal["wav", "mp3"] = "wav"


class Txt2SpeechBody(msgspec.Struct, kw_only=True):
    request: Txt2SpeechRequest
    extra: Txt2SpeechExtra = msgspec.field(default_factory=Txt2SpeechExtra)
