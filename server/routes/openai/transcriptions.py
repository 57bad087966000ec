"""Audio transcriptions and translations (multipart): parse the form, call the transcriber, answer."""

from __future__ import annotations

from typing import Annotated, TypeVar

from litestar import Controller, Request, Router, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body
from litestar.response.base import ASGIResponse

from engines.base import TranscriptionTask
from schemas.openai.transcriptions import Transcription, TranscriptionRequest, TranslationRequest
from server.accounts_hooks import Caller
from server.capabilities.transcription.rendering import RenderedTranscript
from server.capabilities.transcription.transcriber import Transcriber
from server.errors import bad_request
from server.routes.openapi import operation_id
from server.routes.responses import event_stream
from server.settings import AudioSettings
from server.validation import ParsedForm, convert, parse_into_data, read_upload_form

RequestT = TypeVar("RequestT", TranscriptionRequest, TranslationRequest)
_RESPONSES = {
    200: ResponseSpec(
        data_container=Transcription,
        description="JSON, verbose JSON, text, SubRip or WebVTT per response_format; server-sent events when "
        "stream is true",
    )
}


def transcriptions_router(audio: AudioSettings) -> Router:
    """The /audio speech-to-text routes. Their request body may be as large as one upload is
    allowed to be (the app's limit is smaller): the form fields beside the file are tiny."""
    return Router(
        path="/audio", route_handlers=[TranscriptionsController], request_max_body_size=audio.max_upload_bytes
    )


async def _read_form(request: Request, schema: type[RequestT]) -> RequestT:
    """The multipart form as a typed request. The openai SDK sends the audio as the ``file``
    part, lists as repeated ``name[]`` parts, and every other field (extra_body too) as text."""
    form = await read_upload_form(request, "the audio is a file part named 'file'")
    try:
        fields: dict[str, object] = {}
        for name, value in form.multi_items():
            if name == "file":
                continue
            if name.endswith("[]"):
                list_field = fields.setdefault(name.removesuffix("[]"), [])
                if isinstance(list_field, list):
                    list_field.append(value)
            else:
                fields[name] = value
        uploads = form.getall("file", [])
        if len(uploads) != 1 or not isinstance(uploads[0], UploadFile):
            raise bad_request("Send exactly one audio file, as a file part named 'file'.", "file")
        data = await uploads[0].read()
    finally:
        await form.close()  # the upload's spooled temporary file
    if not isinstance(fields.get("model"), str):
        raise bad_request("model is required.", "model")
    # strict=False: form values are text, so "0.2" becomes a float and "true" a bool.
    return convert({**fields, "file": data}, schema, strict=False)


async def _transcription_form(request: Request) -> TranscriptionRequest:
    return await _read_form(request, TranscriptionRequest)


async def _translation_form(request: Request) -> TranslationRequest:
    return await _read_form(request, TranslationRequest)


def _answer(rendered: RenderedTranscript) -> ASGIResponse:
    return ASGIResponse(body=rendered.body, media_type=rendered.media_type)


class TranscriptionsController(Controller):
    path = ""
    tags = ["openai: audio"]
    # The forms are parsed by their own rules (lists as repeated "name[]" parts, extra_body
    # fields as parts of their own), after the key guards.
    dto = ParsedForm
    return_dto = None

    @post(
        "/transcriptions",
        status_code=200,
        operation_id=operation_id("createTranscription"),
        responses=_RESPONSES,
        guards=[parse_into_data(_transcription_form)],
    )
    async def transcriptions(
        self,
        data: Annotated[TranscriptionRequest, Body(media_type=RequestEncodingType.MULTI_PART)],
        transcriber: Transcriber,
        caller: Caller,
    ) -> ASGIResponse:
        if data.stream:
            events = await transcriber.stream(data, caller.meter)
            return event_stream(events)
        return _answer(await transcriber.create(data, TranscriptionTask.TRANSCRIBE, caller.meter))

    @post(
        "/translations",
        status_code=200,
        operation_id=operation_id("createTranslation"),
        responses=_RESPONSES,
        guards=[parse_into_data(_translation_form)],
    )
    async def translations(
        self,
        data: Annotated[TranslationRequest, Body(media_type=RequestEncodingType.MULTI_PART)],
        transcriber: Transcriber,
        caller: Caller,
    ) -> ASGIResponse:
        return _answer(await transcriber.create(data, TranscriptionTask.TRANSLATE, caller.meter))
