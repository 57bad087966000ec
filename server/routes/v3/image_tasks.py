"""The /v3 adapter of image generation: Novita's txt2img, img2img and inpainting bodies onto
`ImageGenerator` jobs, submitted as tasks and executed from the stored body."""

from __future__ import annotations

import io
import secrets

from engines.base import ControlUnit, HiresFix, ImageEngine, ImageGeneration, LoraWeight
from engines.workpools import WorkPool, run_in
from schemas.limits import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE, SEED_LIMIT, SIDE_MULTIPLE
from schemas.v3.common import CommonExtra
from schemas.v3.images import Img2ImgBody, InpaintingBody, Txt2ImgBody
from server.capabilities.calls import WireNames
from server.capabilities.images.defaults import ImageSettings, image_settings
from server.capabilities.images.encoding import ImageOutputs
from server.capabilities.images.generation import ImageGenerator
from server.capabilities.images.inputs import base64_image_bytes, decode_input_image
from server.tasks.models import Task, TaskType
from server.tasks.runner import ProgressReporter, TaskOutcome, TaskRunner
from server.tasks.submission import TaskSubmission
from server.validation import decode_task_body

ImageBody = Txt2ImgBody | Img2ImgBody | InpaintingBody
# A1111's default sampler for SD 1.x / SDXL when a body names none (novita-client sends it too).
V3_SD_SAMPLER = "Euler a"
BODY_TYPES: dict[TaskType, type[Txt2ImgBody] | type[Img2ImgBody] | type[InpaintingBody]] = {
    TaskType.TXT_TO_IMG: Txt2ImgBody,
    TaskType.IMG_TO_IMG: Img2ImgBody,
    TaskType.INPAINTING: InpaintingBody,
}

# The job's fields as Novita names them; the rest are `request.<field>`.
V3_IMAGE_NAMES = WireNames(
    {
        "model": "request.model_name",
        "sampler": "request.sampler_name",
        "vae": "request.sd_vae",
        "refiner_switch_at": "request.refiner",
        "hires_fix.width": "request.hires_fix.target_width",
        "hires_fix.height": "request.hires_fix.target_height",
        "init_image": "request.image_base64",
        "mask_image": "request.mask_image_base64",
        "controlnets": "request.controlnet.units",
        "controlnets[].name": "request.controlnet.units[{}].model_name",
        "controlnets[].image": "request.controlnet.units[{}].image_base64",
        "controlnets[].preprocessor": "request.controlnet.units[{}].preprocessor",
        "controlnets[].guidance_start": "request.controlnet.units[{}].guidance_start",
    },
    prefix="request.",
)


def image_outputs(extra: CommonExtra) -> ImageOutputs:
    """How a /v3 task's images are delivered, from its ``extra``."""
    return ImageOutputs(
        image_type=extra.response_image_type,
        nsfw_detection=extra.enable_nsfw_detection,
        nsfw_level=extra.nsfw_detection_level,
    )


def _input_image(value: str, field: str, *, check: bool) -> bytes:
    """A base64 input image's bytes; with ``check``, decoded once to refuse a bad one. Blocking."""
    param = V3_IMAGE_NAMES(field)
    data = base64_image_bytes(value, param)
    return decode_input_image(data, param) if check else data


def _side(pixels: int, multiple: int = SIDE_MULTIPLE) -> int:
    # The pipelines need multiples of 8 (the flow families 16); keep the input's size as closely as allowed.
    return min(max(pixels // multiple * multiple, MIN_IMAGE_SIDE), MAX_IMAGE_SIDE // multiple * multiple)


def _input_size(data: bytes, multiple: int) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return _side(width, multiple), _side(height, multiple)


def _inverted(mask: bytes) -> bytes:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(mask)) as image:
        buffer = io.BytesIO()
        ImageOps.invert(image.convert("L")).save(buffer, format="PNG")
    return buffer.getvalue()


def image_settings_for(engine: ImageEngine, body: ImageBody) -> ImageSettings:
    """Steps, guidance and sampler of a /v3 body: what it sent, else the model family's defaults."""
    request = body.request
    return image_settings(
        engine,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        sampler=request.sampler_name,
        sd_sampler=V3_SD_SAMPLER,
        names=V3_IMAGE_NAMES,
    )


def image_job(body: ImageBody, seed: int, settings: ImageSettings, *, check_inputs: bool = False) -> ImageGeneration:
    """The engine job a /v3 body asks for. Decodes the input images: blocking, run in a thread."""
    request = body.request
    job = ImageGeneration(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt or "",
        width=0,
        height=0,
        steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        seed=seed,
        image_num=request.image_num,
        sampler=settings.sampler,
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
                width=hires.target_width, height=hires.target_height, strength=hires.strength, upscaler=hires.upscaler
            )
        if body.request.refiner is not None:
            job.refiner_switch_at = body.request.refiner.switch_at
        return job
    job.init_image = _input_image(body.request.image_base64, "init_image", check=check_inputs)
    job.strength = body.request.strength
    width, height = _input_size(job.init_image, settings.side_multiple)
    if isinstance(body, Img2ImgBody):
        job.width, job.height = body.request.width or width, body.request.height or height
        if body.request.refiner is not None:
            job.refiner_switch_at = body.request.refiner.switch_at
        units = body.request.controlnet.units if body.request.controlnet else []
        job.controlnets = [
            ControlUnit(
                name=unit.model_name,
                image=_input_image(unit.image_base64, f"controlnets[{index}].image", check=check_inputs),
                strength=unit.strength,
                preprocessor=unit.preprocessor,
                guidance_start=unit.guidance_start,
                guidance_end=unit.guidance_end,
            )
            for index, unit in enumerate(units)
        ]
        return job
    job.width, job.height = width, height
    job.mask_image = _input_image(body.request.mask_image_base64, "mask_image", check=check_inputs)
    if body.request.inpainting_mask_invert:
        job.mask_image = _inverted(job.mask_image)
    return job


class V3ImageTasks:
    def __init__(self, images: ImageGenerator, submission: TaskSubmission, runner: TaskRunner) -> None:
        self.images = images
        self.submission = submission
        for task_type in BODY_TYPES:
            runner.register(task_type, self.execute)

    async def submit(self, task_type: TaskType, raw: bytes, body: ImageBody, owner: str | None) -> str:
        """Queue ``body``, decoded from ``raw`` by its schema (which checked every fixed range),
        once what depends on the model and the server holds too."""
        request = body.request
        engine = self.images.engine(request.model_name, V3_IMAGE_NAMES)
        await self.submission.check_extra(body.extra)
        seed = secrets.randbelow(SEED_LIMIT) if request.seed is None or request.seed < 0 else request.seed
        # Decoding input images costs milliseconds per megapixel: off the event loop.
        settings = image_settings_for(engine, body)
        job = await run_in(WorkPool.MEDIA, image_job, body, seed, settings, check_inputs=True)
        self.images.check(engine, job, V3_IMAGE_NAMES)
        task = await self.submission.submit(task_type, engine.spec.name, raw, body.extra, owner, seed=seed)
        return task.task_id

    async def execute(self, task: Task, progress: ProgressReporter) -> TaskOutcome:
        body = decode_task_body(task.request, BODY_TYPES[task.task_type])
        settings = image_settings_for(self.images.engine(task.model, V3_IMAGE_NAMES), body)
        job = await run_in(WorkPool.MEDIA, image_job, body, task.seed or 0, settings)
        return await self.images.run_task(
            task.task_id, task.model, job, progress, image_outputs(body.extra), owner=task.owner_key_id
        )
