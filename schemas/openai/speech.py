"""POST /audio/speech (OpenAI's text to speech, on Coqui models). The answer is raw audio bytes."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.constraints import AudioName, SpeechInput, SpeechInstructions
from schemas.limits import MAX_OPENAI_SPEECH_SPEED, MIN_OPENAI_SPEECH_SPEED

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class VoiceRef(msgspec.Struct, kw_only=True):
    """A voice given as an object (the SDK's custom-voice form): its id names the voice."""

    id: AudioName


class SpeechRequest(msgspec.Struct, kw_only=True):
    """Every string is bounded here; what is spoken is limited further by audio.max_speech_chars."""

    model: AudioName
    input: SpeechInput
    voice: AudioName | VoiceRef
    response_format: SpeechFormat = "mp3"
    speed: Annotated[float, msgspec.Meta(ge=MIN_OPENAI_SPEECH_SPEED, le=MAX_OPENAI_SPEECH_SPEED)] = 1.0
    # gpt-4o-mini-tts steers delivery with this; Coqui models have no such control, so it is
    # accepted (clients send it) and has no effect.
    instructions: SpeechInstructions | None = None
    # "sse" (base64 audio in events) is not offered, as with OpenAI's tts-1; "audio" streams the bytes.
    stream_format: Literal["audio", "sse"] = "audio"

    @property
    def voice_name(self) -> str:
        return self.voice if isinstance(self.voice, str) else self.voice.id
