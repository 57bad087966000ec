"""Image generation: txt2img, img2img, inpainting and ControlNet on the image engines.

One home for what every API family shares: the rules that depend on the model (its LoRAs,
embeddings, VAEs, refiner, ControlNets, samplers), the engine call, batching of background
jobs, NSFW detection and the task's outputs. The families (OpenAI images, /v3 tasks,
Novassium, the Stable Diffusion API) build an `ImageGeneration` job from their wire fields
and name those fields back through their `WireNames` when something is refused.
"""

from __future__ import annotations

from collections.abc import Hashable
from contextlib import AbstractAsyncContextManager
from typing import Any

from engines.admission import Priority
from engines.base import (
    BatchImageEngine,
    FamilyImageEngine,
    ImageEngine,
    ImageGeneration,
    ImageResult,
    ProgressCallback,
)
from engines.errors import InvalidJob
from engines.image.control import PREPROCESSORS
from engines.image.hires import hires_upscalers
from engines.image.samplers import SAMPLERS
from engines.scheduler import Scheduler
from schemas.errors import ErrorCode
from server.capabilities.addons import check_addons
from server.capabilities.calls import SAME_NAMES, WireNames, catalog_engine, engine_call, engine_record
from server.capabilities.images.batching import ImageBatcher
from server.capabilities.images.encoding import ImageOutputs, store_task_images
from server.capabilities.images.safety import NsfwDetector
from server.capabilities.output_limits import DEFAULT_OUTPUT_LIMIT, OutputLimit
from server.storage.local import LocalStorage
from server.tasks.models import OutputFile
from server.tasks.runner import TaskOutcome
from server.telemetry.genai import image_attributes

OPERATION = "image_generation"


class ImageGenerator:
    def __init__(
        self,
        scheduler: Scheduler,
        storage: LocalStorage,
        nsfw: NsfwDetector,
        *,
        batch_wait_ms: float = 0.0,
        max_batch_images: int = 8,
        output_limit: OutputLimit = DEFAULT_OUTPUT_LIMIT,
    ) -> None:
        self.scheduler = scheduler
        self.storage = storage
        self.nsfw = nsfw
        self.output_limit = output_limit
        # Compatible background jobs waiting on several runner workers share one pipeline call.
        self.batcher: ImageBatcher | None = None
        if batch_wait_ms > 0 and max_batch_images > 1:
            self.batcher = ImageBatcher(
                self._run_batch, hold=self._hold_for_batch, max_images=max_batch_images, wait_s=batch_wait_ms / 1000
            )

    def engine(self, model: str, names: WireNames = SAME_NAMES) -> ImageEngine:
        """The image model's engine (404 for an unknown name, 400 for another kind), unloaded."""
        return catalog_engine(self.scheduler, model, ImageEngine, names)

    # -- the rules that depend on the model ----------------------------------------------------

    def check(self, engine: ImageEngine, job: ImageGeneration, names: WireNames = SAME_NAMES) -> None:
        """Refuse what ``engine`` cannot run; the wire schemas have checked every fixed range."""
        self.check_output(job, names)
        self.check_denoising(job, names)
        if isinstance(engine, FamilyImageEngine):  # its own rules first: they name the field it refuses
            try:
                engine.check_job(job)
            except InvalidJob as exc:
                raise names.invalid(exc.field or "prompt", exc.message) from None
        options = engine.spec.options
        if job.vae and job.vae not in options.get("vaes", {}):
            raise names.invalid("vae", f"Unknown VAE '{job.vae}' for model {engine.spec.name}.")
        check_addons(engine.spec, job.loras, job.embeddings, names)
        if job.sampler and job.sampler not in SAMPLERS and not isinstance(engine, FamilyImageEngine):
            raise names.invalid("sampler", f"Unknown sampler '{job.sampler}'.")
        if job.refiner_switch_at is not None and "refiner" not in options:
            raise names.invalid("refiner_switch_at", f"The model '{engine.spec.name}' has no refiner on this server.")
        if job.refiner_switch_at is not None and (job.controlnets or job.mask_image is not None):
            raise names.invalid(
                "refiner_switch_at", "The refiner applies to text-to-image and img2img without ControlNet."
            )
        self._check_hires(job, hires_upscalers(options), names)
        self._check_controlnets(engine, job, names)

    def check_output(self, job: ImageGeneration, names: WireNames = SAME_NAMES) -> None:
        """The images the job delivers (after a hires fix, at its target size) stay within the
        server's pixel limits."""
        if job.hires_fix is not None:
            width, height, side = job.hires_fix.width, job.hires_fix.height, "hires_fix.width"
        else:
            width, height, side = job.width, job.height, "width"
        self.output_limit.check(width, height, job.image_num, names, size_field=side)

    @staticmethod
    def _check_hires(job: ImageGeneration, known: tuple[str, ...], names: WireNames) -> None:
        hires = job.hires_fix
        if hires is None:
            return
        for side, target, base in (("width", hires.width, job.width), ("height", hires.height, job.height)):
            if target < base:
                message = f"hires_fix.target_{side} must be at least the base {side}, {base}."
                raise names.invalid(f"hires_fix.{side}", message, ErrorCode.INVALID_IMAGE_SIZE)
        if int(job.steps * hires.strength) < 1:
            message = "hires_fix.strength x steps must be at least 1: no denoising step would run."
            raise names.invalid("hires_fix.strength", message)
        if hires.upscaler not in known:
            message = f"Unknown hires_fix upscaler '{hires.upscaler}'; known: {', '.join(known)}."
            raise names.invalid("hires_fix.upscaler", message)

    @staticmethod
    def _check_controlnets(engine: ImageEngine, job: ImageGeneration, names: WireNames) -> None:
        known = engine.spec.options.get("controlnets", {})
        for index, unit in enumerate(job.controlnets):
            if unit.name not in known:
                raise names.invalid(f"controlnets[{index}].name", f"Unknown ControlNet '{unit.name}'.")
            if unit.preprocessor not in PREPROCESSORS:
                message = (
                    f"Preprocessor '{unit.preprocessor}' is not available here; available: {', '.join(PREPROCESSORS)}."
                )
                raise names.invalid(f"controlnets[{index}].preprocessor", message)
            if not 0 <= unit.guidance_start < unit.guidance_end <= 1:
                message = "guidance_start and guidance_end need 0 <= guidance_start < guidance_end <= 1."
                raise names.invalid(f"controlnets[{index}].guidance_start", message)

    @staticmethod
    def check_denoising(job: ImageGeneration, names: WireNames = SAME_NAMES) -> None:
        """An edit of an image must run at least one denoising step."""
        if job.strength is not None and int(job.steps * job.strength) < 1:
            raise names.invalid("strength", "steps * strength must leave at least one denoising step.")

    # -- running -------------------------------------------------------------------------------

    async def generate(self, model: str, job: ImageGeneration, names: WireNames = SAME_NAMES) -> ImageResult:
        """One interactive job, its client waiting. The caller meters it: a synchronous answer is
        paid per image delivered, once encoded and stored."""
        call = engine_call(self.scheduler, model, ImageEngine, OPERATION, names=names, attributes=_attributes(job))
        async with call as (engine, record):
            result = await engine.generate(job)
            record.produced(images=len(result.images))
        return result

    async def run_task(
        self,
        task_id: str,
        model: str,
        job: ImageGeneration,
        progress: ProgressCallback,
        outputs: ImageOutputs,
        owner: str | None = None,
    ) -> TaskOutcome:
        """One background job of a task: batched with others where the engine allows, then
        delivered as ``outputs`` asks."""
        if outputs.nsfw_detection:
            self.nsfw.require()  # accepted before a restart without a classifier: fail before drawing
        result = await self._generate_in_background(model, job, progress, owner)
        return TaskOutcome(outputs=await self.deliver(task_id, result.images, outputs), seed=result.seed)

    async def deliver(self, task_id: str, images: list[Any], outputs: ImageOutputs) -> list[OutputFile]:
        """A task's images scored (when asked) and stored."""
        nsfw = await self.nsfw.results(images, outputs.nsfw_detection, outputs.nsfw_level)
        return await store_task_images(self.storage, task_id, images, outputs.image_type, nsfw)

    async def _generate_in_background(
        self, model: str, job: ImageGeneration, progress: ProgressCallback, owner: str | None
    ) -> ImageResult:
        key = self._batch_key(model, job)
        if self.batcher is not None and key is not None:
            # The batch holds one lease for all its jobs; this job's record covers its wait.
            async with engine_record(model, OPERATION, attributes=_attributes(job)) as record:
                result = await self.batcher.generate(model, key, job, progress)
                record.produced(images=len(result.images))
            return result
        call = engine_call(
            self.scheduler,
            model,
            ImageEngine,
            OPERATION,
            priority=Priority.BACKGROUND,
            owner=owner,
            attributes=_attributes(job),
        )
        async with call as (engine, record):
            result = await engine.generate(job, progress)
            record.produced(images=len(result.images))
        return result

    def _batch_key(self, model: str, job: ImageGeneration) -> Hashable | None:
        """The job's batch key when batching is on and the model's engine can batch it, else None."""
        if self.batcher is None:
            return None
        engine = self.scheduler.engine(model, ImageEngine)
        return engine.batch_key(job) if isinstance(engine, BatchImageEngine) else None

    def _hold_for_batch(self, model: str) -> AbstractAsyncContextManager[ImageEngine]:
        # One lease for the whole batch; its owner is the context's (the task that opened the batch).
        return self.scheduler.lease(model, ImageEngine, priority=Priority.BACKGROUND)

    @staticmethod
    async def _run_batch(
        engine: ImageEngine, jobs: list[ImageGeneration], progress: ProgressCallback
    ) -> list[ImageResult]:
        if len(jobs) == 1:
            return [await engine.generate(jobs[0], progress)]
        if not isinstance(engine, BatchImageEngine):  # batch keys come only from batching engines
            raise TypeError(f"{engine.spec.name} cannot run a batch")
        return await engine.generate_batch(jobs, progress)


def _attributes(job: ImageGeneration) -> dict[str, object]:
    return image_attributes(job.width, job.height, job.image_num, job.steps, job.seed)
