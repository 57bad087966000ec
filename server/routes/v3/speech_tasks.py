"""The /v3 adapter of text to speech: Novita's txt2speech body onto a `SpeechOrder`, submitted
as a task and executed from the stored body.

The body names no model: the catalog's speech model chosen by settings (tasks.speech_model)
serves every task.
"""

from __future__ import annotations

from engines.base import ModelKind
from engines.registry import CatalogError
from engines.scheduler import Scheduler
from schemas.errors import ApiError, ErrorCode
from schemas.v3.speech import Txt2SpeechBody
from server.capabilities.calls import WireNames
from server.capabilities.speech.synthesis import SpeechOrder, SpeechSynthesis
from server.errors import bad_request
from server.tasks.models import Task, TaskType
from server.tasks.runner import ProgressReporter, TaskOutcome, TaskRunner
from server.tasks.submission import TaskSubmission
from server.validation import decode_task_body

DEMO_SPEECH_MODEL = "demo-tts"

# The order's fields as Novita names them; the rest are `request.<field>`.
V3_SPEECH_NAMES = WireNames({"voice": "request.voice_id"}, prefix="request.")


def _default_model(scheduler: Scheduler) -> str:
    """Unset tasks.speech_model: the demo model when the catalog has it, else its first speech model."""
    if scheduler.registry.get(DEMO_SPEECH_MODEL) is not None:
        return DEMO_SPEECH_MODEL
    speech = [engine.spec.name for engine in scheduler.registry if engine.spec.kind is ModelKind.SPEECH]
    return speech[0] if speech else ""


def speech_order(body: Txt2SpeechBody, model: str) -> SpeechOrder:
    request = body.request
    return SpeechOrder(
        model=model,
        texts=request.texts,
        voice=request.voice_id,
        language=request.language,
        speed=request.speed,
        volume=request.volume,
    )


class V3SpeechTasks:
    def __init__(
        self,
        speech: SpeechSynthesis,
        submission: TaskSubmission,
        runner: TaskRunner,
        scheduler: Scheduler,
        *,
        model: str | None = None,
    ) -> None:
        self.speech = speech
        self.submission = submission
        # None: the default; "": text to speech is off (submissions get a 404).
        self.model = (_default_model(scheduler) if model is None else model) or None
        if self.model is not None:
            engine = scheduler.registry.get(self.model)
            if engine is None or engine.spec.kind is not ModelKind.SPEECH:
                raise CatalogError(f"tasks.speech_model {self.model!r} is not a speech model in the catalog")
        runner.register(TaskType.TXT_TO_SPEECH, self.execute)

    async def submit(self, raw: bytes, body: Txt2SpeechBody, owner: str | None) -> str:
        """Queue ``body``, decoded from ``raw`` by its schema (which checked every fixed range),
        once what depends on the model and the server holds too."""
        if self.model is None:
            raise ApiError(ErrorCode.MODEL_NOT_FOUND, "No speech model is configured on this server.")
        if body.extra.enable_nsfw_detection:
            raise bad_request("NSFW detection applies to images only.", "extra.enable_nsfw_detection")
        engine = await self.speech.check(speech_order(body, self.model), V3_SPEECH_NAMES)
        await self.submission.check_extra(body.extra)
        task = await self.submission.submit(TaskType.TXT_TO_SPEECH, engine.spec.name, raw, body.extra, owner)
        return task.task_id

    async def execute(self, task: Task, progress: ProgressReporter) -> TaskOutcome:
        body = decode_task_body(task.request, Txt2SpeechBody)
        return await self.speech.run_task(
            task.task_id,
            speech_order(body, task.model),
            progress,
            audio_format=body.extra.response_audio_type,
            owner=task.owner_key_id,
        )
