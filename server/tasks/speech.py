"""/v3 txt2speech tasks: validate and submit, then speak each text on the speech engine.

The body names no model: the catalog's speech model chosen by settings (tasks.speech_model)
serves every task. Each text becomes one audio file, in the order given. Files are stored only
once every text has been spoken, so a task that fails leaves no partial output behind.
"""

from __future__ import annotations

import asyncio
from typing import cast

from engines.admission import Priority
from engines.base import ModelKind, SpeechEngine, SpeechJob
from engines.registry import CatalogError
from engines.scheduler import Scheduler
from schemas.errors import ApiError, ErrorCode
from schemas.v3.speech import Txt2SpeechBody
from server.serving.common import bad_request
from server.serving.speech import check_language, check_text, check_voice, speech_engine
from server.serving.speech_audio import encode_audio
from server.storage.local import LocalStorage
from server.tasks.bodies import decode_task_body
from server.tasks.images import ImageTasks, enqueue
from server.tasks.models import OutputFile, Task, TaskType
from server.tasks.runner import ProgressReporter, TaskOutcome, TaskRunner
from server.telemetry.genai import inference

DEMO_SPEECH_MODEL = "demo-tts"


def _default_model(scheduler: Scheduler) -> str:
    """Unset tasks.speech_model: the demo model when the catalog has it, else its first speech model."""
    if scheduler.registry.get(DEMO_SPEECH_MODEL) is not None:
        return DEMO_SPEECH_MODEL
    speech = [engine.spec.name for engine in scheduler.registry if engine.spec.kind is ModelKind.SPEECH]
    return speech[0] if speech else ""


class SpeechTasks:
    def __init__(
        self,
        scheduler: Scheduler,
        runner: TaskRunner,
        storage: LocalStorage,
        *,
        image_tasks: ImageTasks,
        max_chars: int,
        model: str | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.storage = storage
        # The `extra` object is common to every /v3 task: one place checks it.
        self.image_tasks = image_tasks
        self.max_chars = max_chars
        # None: the default; "": text to speech is off (submissions get a 404).
        self.model = (_default_model(scheduler) if model is None else model) or None
        if self.model is not None:
            engine = scheduler.registry.get(self.model)
            if engine is None or engine.spec.kind is not ModelKind.SPEECH:
                raise CatalogError(f"tasks.speech_model {self.model!r} is not a speech model in the catalog")
        runner.register(TaskType.TXT_TO_SPEECH, self.execute)

    def _check_numbers(self, body: Txt2SpeechBody) -> None:
        """What the server's settings limit; the schema has checked every fixed range."""
        request = body.request
        total = sum(len(text) for text in request.texts)
        if total > self.max_chars:
            raise bad_request(f"texts hold {total} characters; at most {self.max_chars} in all.", "request.texts")
        if body.extra.enable_nsfw_detection:
            raise bad_request("NSFW detection applies to images only.", "extra.enable_nsfw_detection")

    async def submit(self, raw: bytes, body: Txt2SpeechBody, owner: str | None) -> str:
        if self.model is None:
            raise ApiError(ErrorCode.MODEL_NOT_FOUND, "No speech model is configured on this server.")
        self._check_numbers(body)
        request = body.request
        engine = await speech_engine(self.scheduler, self.model)
        check_voice(engine, request.voice_id, "request.voice_id")
        check_language(engine, request.language, "request.language")
        for text in request.texts:
            check_text(engine, text, "request.texts", request.language)
        await self.image_tasks._check_extra(body.extra)
        task = Task(
            task_type=TaskType.TXT_TO_SPEECH,
            model=engine.spec.name,
            request=raw,
            owner_key_id=owner,
            webhook_url=body.extra.webhook.url if body.extra.webhook else None,
        )
        await enqueue(self.runner, task, body.extra)
        return task.task_id

    async def execute(self, task: Task, progress: ProgressReporter) -> TaskOutcome:
        body = decode_task_body(task.request, Txt2SpeechBody)
        request, audio_type = body.request, body.extra.response_audio_type
        total = max(1, sum(len(text) for text in request.texts))
        spoken = 0
        seconds = 0.0
        files: list[bytes] = []
        lease = self.scheduler.lease(task.model, priority=Priority.BACKGROUND, owner=task.owner_key_id)
        async with inference("speech", task.model) as call, lease as leased:
            engine = cast(SpeechEngine, leased)
            for text in request.texts:
                job = SpeechJob(text=text, voice=request.voice_id, language=request.language, speed=request.speed)
                result = await engine.synthesize(job)
                call.produced(audio_seconds=len(result.samples) / result.sample_rate)
                seconds += len(result.samples) / result.sample_rate
                data = await asyncio.to_thread(
                    encode_audio, result.samples, result.sample_rate, audio_type, gain=request.volume
                )
                files.append(data)
                spoken += len(text)
                progress(spoken / total)
        outputs = []
        for index, data in enumerate(files):
            key = f"{task.task_id}/{index}.{audio_type}"
            await asyncio.to_thread(self.storage.put, key, data)
            outputs.append(OutputFile(kind="audio", key=key, media_type=audio_type))
        return TaskOutcome(outputs=outputs, audio_seconds=seconds)
