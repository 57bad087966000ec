"""POST /audio/speech: parse, call the speech service, stream the audio bytes."""

from __future__ import annotations

from litestar import Controller, Request, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse

from schemas.openai.speech import SpeechRequest
from server.accounts_hooks import caller_meter
from server.state import AppState
from server.validation import OpenAIBody

_RESPONSES = {
    200: ResponseSpec(
        data_container=bytes,
        media_type="audio/mpeg",
        description="The audio in response_format (mp3, opus in Ogg, aac in ADTS, flac, wav, or raw 24 kHz pcm)",
    )
}


class SpeechController(Controller):
    path = "/audio"
    tags = ["openai: audio"]

    @post("/speech", status_code=200, responses=_RESPONSES, dto=OpenAIBody, return_dto=None)
    async def speech(self, request: Request, data: SpeechRequest, app_state: AppState) -> ASGIResponse:
        # An ASGI response, not litestar's Stream: its media type follows the requested format.
        # The streaming response cancels the iterator when the client disconnects, which stops
        # synthesis at the next sentence.
        stream = await app_state.speech.stream(data, caller_meter(request))
        return ASGIStreamingResponse(iterator=stream.chunks, media_type=stream.media_type)
