"""/v3 image tasks (txt2img, img2img, inpainting): validate and submit, then execute on the image engine."""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
from collections.abc import Hashable
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

from engines.admission import Priority
from engines.base import (
    BatchImageEngine,
    ControlUnit,
    Engine,
    HiresFix,
    ImageEngine,
    ImageGeneration,
    ImageResult,
    LoraWeight,
    ModelKind,
    ProgressCallback,
    SafetyEngine,
)
from engines.image.demo import SAFETY_MODEL as DEMO_SAFETY_MODEL
from engines.image.safety import nsfw_confidence, nsfw_levels
from engines.registry import CatalogError
from engines.scheduler import Scheduler
from schemas.errors import ApiError, ErrorCode
from schemas.limits import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE, SEED_LIMIT, SIDE_MULTIPLE
from schemas.v3.common import CommonExtra
from schemas.v3.images import ImageTaskRequest, Img2ImgBody, InpaintingBody, Txt2ImgBody, Txt2ImgRequest
from server.capabilities.images.encoding import encode_image
from server.capabilities.images.inputs import base64_image_bytes, decode_input_image
from server.netguard import check_public_url_async
from server.storage.local import LocalStorage
from server.tasks.batching import ImageBatcher
from server.tasks.bodies import decode_task_body
from server.tasks.models import OutputFile, Task, TaskStatus, TaskType, now_ms
from server.tasks.runner import ProgressReporter, TaskOutcome, TaskRunner
from server.telemetry.genai import image_attributes, inference

# The image sides' range, under the names the benchmarks use.
MIN_SIDE, MAX_SIDE = MIN_IMAGE_SIDE, MAX_IMAGE_SIDE

ImageBody = Txt2ImgBody | Img2ImgBody | InpaintingBody
BODY_TYPES: dict[TaskType, type[Txt2ImgBody] | type[Img2ImgBody] | type[InpaintingBody]] = {
    TaskType.TXT_TO_IMG: Txt2ImgBody,
    TaskType.IMG_TO_IMG: Img2ImgBody,
    TaskType.INPAINTING: InpaintingBody,
}


def _invalid(message: str, param: str, code: ErrorCode = ErrorCode.INVALID_REQUEST_BODY) -> ApiError:
    return ApiError(code, message, param=param)


def _base64_image(value: str, param: str) -> bytes:
    return decode_input_image(base64_image_bytes(value, param), param)


async def enqueue(runner: TaskRunner, task: Task, extra: CommonExtra) -> None:
    """Queue a validated task, or with webhook test mode, record its mock result at once."""
    test_mode = extra.webhook.test_mode if extra.webhook else None
    if test_mode is not None and test_mode.enabled:
        # A mock event of the chosen status; no inference runs.
        task.status = TaskStatus(test_mode.return_task_status)
        task.execute_time_ms = task.complete_time_ms = now_ms()
        if task.status is TaskStatus.FAILED:
            task.reason = "Webhook test mode: a mock failure."
        await runner.record_finished(task)
    else:
        await runner.submit(task)


def _image_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    # The pipelines need multiples of 8; keep the input's size as closely as allowed.
    return _side(width), _side(height)


def _side(pixels: int) -> int:
    return min(max(pixels // SIDE_MULTIPLE * SIDE_MULTIPLE, MIN_SIDE), MAX_SIDE)


class ImageTasks:
    def __init__(
        self,
        scheduler: Scheduler,
        runner: TaskRunner,
        storage: LocalStorage,
        *,
        allow_private_urls: bool,
        safety_model: str | None = None,
        batch_wait_ms: float = 0.0,
        max_batch_images: int = 8,
    ) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.storage = storage
        self.allow_private_urls = allow_private_urls
        # Compatible txt2img jobs waiting on several runner workers share one pipeline call.
        self.batcher: ImageBatcher | None = None
        if batch_wait_ms > 0 and max_batch_images > 1:
            self.batcher = ImageBatcher(
                self._run_batch, hold=self._hold_for_batch, max_images=max_batch_images, wait_s=batch_wait_ms / 1000
            )
        # The classifier for extra.enable_nsfw_detection (settings tasks.safety_model); unset means
        # the demo one when the catalog has it, "" means none.
        if safety_model is None:
            safety_model = DEMO_SAFETY_MODEL if scheduler.registry.get(DEMO_SAFETY_MODEL) is not None else ""
        self.safety_model = safety_model or None
        self.nsfw_levels: dict[int, frozenset[str]] = {}
        if self.safety_model is not None:
            classifier = scheduler.registry.get(self.safety_model)
            if classifier is None or classifier.spec.kind is not ModelKind.SAFETY:
                raise CatalogError(f"tasks.safety_model {self.safety_model!r} is not a safety model in the catalog")
            self.nsfw_levels = nsfw_levels(classifier.spec)
        for task_type in BODY_TYPES:
            runner.register(task_type, self.execute)

    async def _check_extra(self, extra: CommonExtra) -> None:
        if extra.webhook is not None:
            await check_public_url_async(
                extra.webhook.url, allow_private=self.allow_private_urls, param="extra.webhook.url"
            )
        await self.runner.check_custom_storage(extra.custom_storage)
        if extra.enable_nsfw_detection and self.safety_model is None:
            raise _invalid("NSFW detection is not configured on this server.", "extra.enable_nsfw_detection")

    def _check_common(self, request: ImageTaskRequest, engine: ImageEngine) -> None:
        """What depends on the model; the schema has checked every fixed range."""
        options = engine.spec.options
        if request.sd_vae and request.sd_vae not in options.get("vaes", {}):
            raise _invalid(f"Unknown VAE '{request.sd_vae}' for model {engine.spec.name}.", "request.sd_vae")
        for lora in request.loras or []:
            if lora.model_name not in options.get("loras", {}):
                raise _invalid(f"Unknown LoRA '{lora.model_name}'.", "request.loras")
        for embedding in request.embeddings or []:
            if embedding.model_name not in options.get("embeddings", {}):
                raise _invalid(f"Unknown embedding '{embedding.model_name}'.", "request.embeddings")
        from engines.image.samplers import SAMPLERS

        if request.sampler_name and request.sampler_name not in SAMPLERS:
            raise _invalid(f"Unknown sampler '{request.sampler_name}'.", "request.sampler_name")

    def _check_txt2img(self, request: Txt2ImgRequest, engine: ImageEngine) -> None:
        hires = request.hires_fix
        if hires is not None:
            from engines.image.hires import HIRES_UPSCALERS

            for side, target, base in (
                ("width", hires.target_width, request.width),
                ("height", hires.target_height, request.height),
            ):
                if target < base:
                    message = f"hires_fix.target_{side} must be at least the base {side}, {base}."
                    raise _invalid(message, f"request.hires_fix.target_{side}", ErrorCode.INVALID_IMAGE_SIZE)
            if int(request.steps * hires.strength) < 1:
                message = "hires_fix.strength x steps must be at least 1: no denoising step would run."
                raise _invalid(message, "request.hires_fix.strength")
            if hires.upscaler not in HIRES_UPSCALERS:
                message = f"Unknown hires_fix upscaler '{hires.upscaler}'; known: {', '.join(HIRES_UPSCALERS)}."
                raise _invalid(message, "request.hires_fix.upscaler")
        if request.refiner is not None and "refiner" not in engine.spec.options:
            raise _invalid(f"The model '{engine.spec.name}' has no refiner on this server.", "request.refiner")

    def _check_controlnet(self, body: Img2ImgBody, engine: ImageEngine) -> None:
        from engines.image.control import PREPROCESSORS

        if body.request.controlnet is None:
            return
        units = body.request.controlnet.units
        known = engine.spec.options.get("controlnets", {})
        for index, unit in enumerate(units):
            param = f"request.controlnet.units[{index}]"
            if unit.model_name not in known:
                raise _invalid(f"Unknown ControlNet '{unit.model_name}'.", f"{param}.model_name")
            if unit.preprocessor not in PREPROCESSORS:
                message = (
                    f"Preprocessor '{unit.preprocessor}' is not available here; available: {', '.join(PREPROCESSORS)}."
                )
                raise _invalid(message, f"{param}.preprocessor")
            if not 0 <= unit.guidance_start < unit.guidance_end <= 1:
                message = "guidance_start and guidance_end need 0 <= guidance_start < guidance_end <= 1."
                raise _invalid(message, f"{param}.guidance_start")

    def _check_specific(self, body: ImageBody) -> None:
        if isinstance(body, Txt2ImgBody):
            return
        request = body.request
        _base64_image(request.image_base64, "request.image_base64")
        if isinstance(body, Img2ImgBody):
            for index, unit in enumerate(body.request.controlnet.units if body.request.controlnet else []):
                _base64_image(unit.image_base64, f"request.controlnet.units[{index}].image_base64")
        else:
            _base64_image(body.request.mask_image_base64, "request.mask_image_base64")

    async def submit(self, task_type: TaskType, raw: bytes, body: ImageBody, owner: str | None) -> str:
        """Queue ``body``, decoded from ``raw`` by its schema (which checked every fixed range),
        once what depends on the model and the server holds too."""
        request = body.request
        engine = self.scheduler.engine(request.model_name)
        if engine.spec.kind is not ModelKind.IMAGE:
            raise _invalid(f"The model '{request.model_name}' is not an image model.", "request.model_name")
        await self._check_extra(body.extra)
        self._check_common(request, cast(ImageEngine, engine))
        if isinstance(body, Txt2ImgBody):
            self._check_txt2img(body.request, cast(ImageEngine, engine))
        elif isinstance(body, Img2ImgBody):
            self._check_controlnet(body, cast(ImageEngine, engine))
        # Decoding input images costs milliseconds per megapixel: off the event loop.
        await asyncio.to_thread(self._check_specific, body)
        task = Task(
            task_type=task_type,
            model=engine.spec.name,
            request=raw,
            owner_key_id=owner,
            seed=secrets.randbelow(SEED_LIMIT) if request.seed is None or request.seed < 0 else request.seed,
            webhook_url=body.extra.webhook.url if body.extra.webhook else None,
        )
        await enqueue(self.runner, task, body.extra)
        return task.task_id

    def _job(self, body: ImageBody, seed: int) -> ImageGeneration:
        request = body.request
        job = ImageGeneration(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or "",
            width=0,
            height=0,
            steps=request.steps,
            guidance_scale=request.guidance_scale,
            seed=seed,
            image_num=request.image_num,
            sampler=request.sampler_name or None,
            clip_skip=request.clip_skip or None,
            loras=[LoraWeight(name=lora.model_name, strength=lora.strength) for lora in request.loras or []],
            embeddings=[embedding.model_name for embedding in request.embeddings or []],
            vae=request.sd_vae or None,
        )
        if isinstance(body, Txt2ImgBody):
            job.width, job.height = body.request.width, body.request.height
            hires = body.request.hires_fix
            if hires is not None:
                job.hires_fix = HiresFix(
                    width=hires.target_width,
                    height=hires.target_height,
                    strength=hires.strength,
                    upscaler=hires.upscaler,
                )
            if body.request.refiner is not None:
                job.refiner_switch_at = body.request.refiner.switch_at
            return job
        job.init_image = base64.b64decode(body.request.image_base64.split(",", 1)[-1])
        job.strength = body.request.strength
        width, height = _image_size(job.init_image)
        if isinstance(body, Img2ImgBody):
            job.width, job.height = body.request.width or width, body.request.height or height
            job.controlnets = [
                ControlUnit(
                    name=unit.model_name,
                    image=base64_image_bytes(unit.image_base64, "request.controlnet.units"),
                    strength=unit.strength,
                    preprocessor=unit.preprocessor,
                    guidance_start=unit.guidance_start,
                    guidance_end=unit.guidance_end,
                )
                for unit in (body.request.controlnet.units if body.request.controlnet else [])
            ]
        else:
            job.width, job.height = width, height
            job.mask_image = base64.b64decode(body.request.mask_image_base64.split(",", 1)[-1])
            if body.request.inpainting_mask_invert:
                job.mask_image = _inverted(job.mask_image)
        return job

    async def nsfw_results(self, images: list[Any], extra: CommonExtra) -> list[dict[str, object] | None]:
        """Per image, the task result's `nsfw_detection_result`: None unless `extra` asks for detection."""
        if not extra.enable_nsfw_detection:
            return [None] * len(images)
        if self.safety_model is None:  # accepted before a restart without a classifier
            raise _invalid("NSFW detection is not configured on this server.", "extra.enable_nsfw_detection")
        # Only task work reaches here: it queues behind interactive requests, like the generation.
        async with self.scheduler.lease(self.safety_model, priority=Priority.BACKGROUND) as classifier:
            scores = await cast(SafetyEngine, classifier).classify(images)
        counted = self.nsfw_levels[extra.nsfw_detection_level]
        return [{"valid": True, "confidence": nsfw_confidence(probabilities, counted)} for probabilities in scores]

    def _batch_key(self, model: str, job: ImageGeneration) -> Hashable | None:
        """The job's batch key when batching is on and the model's engine can batch it, else None."""
        if self.batcher is None:
            return None
        engine = self.scheduler.engine(model)
        return engine.batch_key(job) if isinstance(engine, BatchImageEngine) else None

    def _hold_for_batch(self, model: str) -> AbstractAsyncContextManager[Engine]:
        # One lease for the whole batch; its owner is the context's (the task that opened the batch).
        return self.scheduler.lease(model, priority=Priority.BACKGROUND)

    @staticmethod
    async def _run_batch(leased: Engine, jobs: list[ImageGeneration], progress: ProgressCallback) -> list[ImageResult]:
        if len(jobs) == 1:
            return [await cast(ImageEngine, leased).generate(jobs[0], progress)]
        return await cast(BatchImageEngine, leased).generate_batch(jobs, progress)

    async def execute(self, task: Task, progress: ProgressReporter) -> TaskOutcome:
        body = decode_task_body(task.request, BODY_TYPES[task.task_type])
        detect = body.extra.enable_nsfw_detection
        if detect and self.safety_model is None:  # accepted before a restart without a classifier
            raise _invalid("NSFW detection is not configured on this server.", "extra.enable_nsfw_detection")
        job = await asyncio.to_thread(self._job, body, task.seed or 0)
        attributes = image_attributes(job.width, job.height, job.image_num, job.steps, job.seed)
        call = inference("image_generation", task.model, attributes=attributes)
        key = self._batch_key(task.model, job)
        if self.batcher is not None and key is not None:
            async with call:
                result = await self.batcher.generate(task.model, key, job, progress)
                call.produced(images=len(result.images))
        else:
            lease = self.scheduler.lease(task.model, priority=Priority.BACKGROUND, owner=task.owner_key_id)
            async with call, lease as leased:
                result = await cast(ImageEngine, leased).generate(job, progress)
                call.produced(images=len(result.images))
        nsfw = await self.nsfw_results(result.images, body.extra)
        image_type = body.extra.response_image_type
        outputs = []
        for index, (image, detection) in enumerate(zip(result.images, nsfw, strict=True)):
            data = await asyncio.to_thread(encode_image, image, image_type)
            key = f"{task.task_id}/{index}.{image_type}"
            await asyncio.to_thread(self.storage.put, key, data)
            outputs.append(OutputFile(kind="image", key=key, media_type=image_type, nsfw=detection))
        return TaskOutcome(outputs=outputs, seed=result.seed)


def _inverted(mask: bytes) -> bytes:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(mask)) as image:
        buffer = io.BytesIO()
        ImageOps.invert(image.convert("L")).save(buffer, format="PNG")
    return buffer.getvalue()
