"""POST /audio/speech: OpenAI's fields onto a `SpeechOrder`, the audio bytes streamed back."""

from __future__ import annotations

from litestar import Controller, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse

from schemas.openai.speech import SpeechRequest
from server.accounts_hooks import Caller
from server.capabilities.calls import WireNames
from server.capabilities.speech.synthesis import SpeechOrder, SpeechSynthesis
from server.routes.openapi import operation_id
from server.validation import OpenAIBody

# The order's fields as OpenAI names them; the others have the same names.
OPENAI_SPEECH_NAMES = WireNames({"texts": "input"})

_RESPONSES = {
    200: ResponseSpec(
        data_container=bytes,
        media_type="audio/mpeg",
        description="The audio in response_format (mp3, opus in Ogg, aac in ADTS, flac, wav, or raw 24 kHz pcm)",
    )
}


def speech_order(request: SpeechRequest) -> SpeechOrder:
    if request.stream_format != "audio":
        raise OPENAI_SPEECH_NAMES.invalid(
            "stream_format", "stream_format 'sse' is not supported; the audio bytes stream as they are made."
        )
    return SpeechOrder(model=request.model, texts=[request.input], voice=request.voice_name, speed=request.speed)


class SpeechController(Controller):
    path = "/audio"
    tags = ["openai: audio"]

    @post(
        "/speech",
        status_code=200,
        operation_id=operation_id("createSpeech"),
        responses=_RESPONSES,
        dto=OpenAIBody,
        return_dto=None,
    )
    async def speech(self, data: SpeechRequest, speech: SpeechSynthesis, caller: Caller) -> ASGIResponse:
        # An ASGI response, not litestar's Stream: its media type follows the requested format.
        # A client that leaves cancels the request (server/cancellation.py), which closes the
        # stream and stops synthesis at the next sentence.
        order = speech_order(data)
        stream = await speech.stream(order, data.response_format, caller.meter, OPENAI_SPEECH_NAMES)
        return ASGIStreamingResponse(iterator=stream.chunks, media_type=stream.media_type)
