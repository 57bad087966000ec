"""/v3 speech tasks: txt2speech."""

from __future__ import annotations

from litestar import Controller, Request, post

from schemas.v3.common import TaskSubmitted
from schemas.v3.speech import Txt2SpeechBody
from server.accounts_hooks import Caller
from server.routes.v3.speech_tasks import V3SpeechTasks
from server.validation import NovitaBody, refuse_empty_body


class V3SpeechController(Controller):
    path = "/v3/async"
    tags = ["v3: async tasks"]
    # Bodies are decoded as novita-client sends them: explicit nulls read as "not given".
    dto = NovitaBody
    return_dto = None
    guards = [refuse_empty_body]

    # The task stores its body as sent; Litestar keeps the bytes it decoded `data` from.
    @post("/txt2speech", status_code=200, summary="Submit a text-to-speech task", operation_id="txt2speech")
    async def txt2speech(
        self, request: Request, data: Txt2SpeechBody, v3_speech: V3SpeechTasks, caller: Caller
    ) -> TaskSubmitted:
        return TaskSubmitted(task_id=await v3_speech.submit(await request.body(), data, caller.key_id))
