"""FlowImageEngine: the flow-matching families (FLUX.1, Stable Diffusion 3 / 3.5, Qwen-Image) behind
the ImageEngine and BatchImageEngine protocols.

Like the SD engine (engines/image/pipelines.py) a pipeline call runs on a worker thread inside the
scheduler's device turn, with progress and cancellation from the step callback. What differs is
the family's rules (engines/image/families.py): its own defaults, sizes in multiples of 16, one
scheduler (FlowMatchEuler), and no A1111 machinery: a sampler name other than the family's own,
clip_skip above 1, "(word:1.3)" weighting, VAEs, embeddings, LoRAs, ControlNets, hires fix and
refiner are refused naming the field, never dropped. The text encoders are T5 / Qwen2.5-VL, whose
windows (256 tokens for schnell and SD3, 512 for dev and Qwen-Image) the pipelines truncate to;
CLIP's 77-token window only adds pooled text. `guidance_scale` is the family's guidance:
FLUX.1 dev's embedded guidance, SD3's CFG, Qwen-Image's true CFG (with " " as the negative
prompt when none is sent, as its model card does). FLUX.1 has no negative prompt (no true CFG):
one sent is refused.

Prompts are encoded per job with the pipeline's own encode_prompt and handed over as embeddings,
so jobs of one batch stack into one call whatever their prompts (FLUX and SD3 pad text to a fixed
length; Qwen-Image's embeddings are as long as the prompt, so only equal lengths share a call).
"""

from __future__ import annotations

import functools
import io
import logging
import re
import threading
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal

from engines.base import ImageDefaults, ImageGeneration, ImageResult, ModelSpec, ProgressCallback
from engines.errors import InvalidJob
from engines.image.devices import pipeline_bytes, release_memory
from engines.image.families import FLOW_SAMPLER, RULES, FlowFamily, spec_family
from engines.threads import run_cancellable
from engines.workpools import WorkPool, run_in

log = logging.getLogger("omniserve.engines.flow")

# A1111's unambiguous weighting: "(text:1.3)". Plain parentheses are ordinary text to T5.
_WEIGHTED = re.compile(r"\([^()]*:\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)\s*\)")
# Qwen-Image's model card runs true CFG against a one-space negative prompt.
_QWEN_EMPTY_NEGATIVE = " "


class _Cancelled(Exception):
    """Raised from the step callback to stop a pipeline whose caller has gone away."""


def family_refusal(family: FlowFamily, job: ImageGeneration) -> InvalidJob | None:
    """What in `job` the family cannot honour, as a refusal naming the field; None when all fits."""
    rules = RULES[family]
    name = family.value
    if job.sampler is not None and job.sampler != FLOW_SAMPLER:
        return InvalidJob(f"{name} models run their own {FLOW_SAMPLER} scheduler; leave sampler unset.", "sampler")
    if job.clip_skip is not None and job.clip_skip != 1:
        return InvalidJob(f"clip_skip does not apply to {name} models.", "clip_skip")
    for field, value in (("prompt", job.prompt), ("negative_prompt", job.negative_prompt)):
        if _WEIGHTED.search(value):
            return InvalidJob(
                f"{field} uses A1111 weighting like (word:1.3), which {name} text encoders do not read.", field
            )
    if job.negative_prompt and not rules.negative_prompt:
        return InvalidJob(f"{name} models have no negative prompt (no true CFG); leave it empty.", "negative_prompt")
    for field, present in (
        ("vae", job.vae is not None),
        ("embeddings", bool(job.embeddings)),
        ("loras", bool(job.loras)),
        ("controlnets", bool(job.controlnets)),
        ("hires_fix", job.hires_fix is not None),
        ("refiner_switch_at", job.refiner_switch_at is not None),
    ):
        if present:
            return InvalidJob(f"{field} is not available for {name} models on this server.", field)
    multiple = rules.defaults.side_multiple
    for side, pixels in (("width", job.width), ("height", job.height)):
        if pixels % multiple:
            return InvalidJob(f"{side} must be a multiple of {multiple} for {name} models; got {pixels}.", side)
    if job.init_image is not None and job.strength is not None and int(job.steps * job.strength) < 1:
        return InvalidJob("steps * strength must leave at least one denoising step.", "strength")
    return None


def _decode_image(data: bytes, size: tuple[int, int], mode: str, field: str) -> Any:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert(mode).resize(size, Image.Resampling.LANCZOS)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidJob(f"{field} is not a readable PNG, JPEG or WebP image", field) from exc


def _shape_key(inputs: dict[str, Any]) -> Hashable:
    """What prompt inputs must share to stack into one call: every tensor's shape (a None mask too)."""
    return tuple((key, None if value is None else tuple(value.shape)) for key, value in sorted(inputs.items()))


def _stacked(inputs: list[dict[str, Any]], counts: list[int]) -> dict[str, Any]:
    """One call's prompt arguments: job j's embeddings repeated counts[j] times, in job order."""
    import torch

    out: dict[str, Any] = {}
    for key, first in inputs[0].items():
        if first is None:
            out[key] = None
            continue
        out[key] = torch.cat(
            [one[key].repeat(count, *[1] * (one[key].dim() - 1)) for one, count in zip(inputs, counts, strict=True)]
        )
    return out


def _qwen_encoding(pipe: Any, text: str) -> tuple[Any, Any]:
    """Qwen-Image's embeddings and mask for `text`. encode_prompt answers None for a mask with no
    padding, and the pipeline warns on every call given embeddings without one: hand it the ones
    it stands for (the pipeline turns them back into None)."""
    import torch

    embeds, mask = pipe.encode_prompt(text, device=pipe._execution_device)
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    return embeds, mask


class FlowImageEngine:
    """One flow-matching text-to-image pipeline; its img2img and inpainting pipelines share its modules."""

    device_serial: Literal[True] = True  # one job at a time on the device (DeviceSerialEngine)

    def __init__(self, spec: ModelSpec, *, device: str = "cpu") -> None:
        family = spec_family(spec)
        if family is None:
            raise ValueError(f"model {spec.name}: {spec.path} is no FLUX.1, SD3 or Qwen-Image pipeline")
        self.spec = spec
        self.device = device
        self.family = family
        self.rules = RULES[family]
        self._pipe: Any = None
        self._derived: dict[str, Any] = {}  # "img2img" / "inpaint" -> pipeline built with from_pipe

    # -- the family -----------------------------------------------------------------------------

    @property
    def image_defaults(self) -> ImageDefaults:
        return self.rules.defaults

    def check_job(self, job: ImageGeneration) -> None:
        refusal = family_refusal(self.family, job)
        if refusal is not None:
            raise refusal

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    async def load(self) -> None:
        if self._pipe is None:
            self._pipe = await run_in(WorkPool.ENGINE, self._load_pipeline)

    def _load_pipeline(self) -> Any:
        import diffusers
        import torch

        # bfloat16 where kernels for it exist (the families were trained in it); CPU runs float32.
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        log.info("loading %s model %s with diffusers", self.family.value, self.spec.name)
        pipe = getattr(diffusers, self.rules.pipeline).from_pretrained(str(Path(self.spec.path)), dtype=dtype)
        pipe.set_progress_bar_config(disable=True)  # progress goes to the callback, not to stderr
        return pipe.to(self.device)

    async def unload(self) -> None:
        self._pipe = None
        self._derived.clear()
        release_memory(self.device)

    def memory_bytes(self) -> int:
        return self.spec.memory_bytes if self._pipe is None else pipeline_bytes(self._pipe)

    async def health(self) -> bool:
        return self._pipe is not None

    # -- generation -----------------------------------------------------------------------------

    async def generate(self, job: ImageGeneration, progress: ProgressCallback | None = None) -> ImageResult:
        """Images for `job`; image i starts from the noise of a CPU generator seeded with `job.seed + i`."""
        if self._pipe is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        self.check_job(job)  # before the worker thread starts: bad input fails at once
        images = await run_cancellable(functools.partial(self._run, [job], progress))
        return ImageResult(images=images[0], seed=job.seed)

    def batch_key(self, job: ImageGeneration) -> Hashable | None:
        """Plain txt2img jobs of one size, steps and guidance share a call; prompts, seeds and counts may differ."""
        if job.init_image is not None or family_refusal(self.family, job) is not None:
            return None
        return (job.width, job.height, job.steps, job.guidance_scale)

    async def generate_batch(
        self, jobs: list[ImageGeneration], progress: ProgressCallback | None = None
    ) -> list[ImageResult]:
        """`generate` for several jobs of one batch_key in one pipeline call: the same pixels per job and seed."""
        if self._pipe is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        keys = {self.batch_key(job) for job in jobs}
        if None in keys or len(keys) > 1:
            raise ValueError("the jobs of one batch must share a batch_key")
        images = await run_cancellable(functools.partial(self._run, jobs, progress))
        return [ImageResult(images=found, seed=job.seed) for job, found in zip(jobs, images, strict=True)]

    def _run(
        self, jobs: list[ImageGeneration], progress: ProgressCallback | None, cancelled: threading.Event
    ) -> list[list[Any]]:
        """Every job's images: one pipeline call per group of equally shaped prompt embeddings."""
        import torch

        first = jobs[0]  # a batch shares size, steps and guidance (its batch key)
        if cancelled.is_set():
            raise _Cancelled
        pipe = self._pipeline_for(first)
        encoded: dict[tuple[str, str], dict[str, Any]] = {}
        with torch.inference_mode():
            for job in jobs:  # one encoding per distinct text (the usual batch: one prompt, many seeds)
                if (job.prompt, job.negative_prompt) not in encoded:
                    encoded[job.prompt, job.negative_prompt] = self._encode(job)
        prompts = [encoded[job.prompt, job.negative_prompt] for job in jobs]
        groups: dict[Hashable, list[int]] = {}
        for index, inputs in enumerate(prompts):
            groups.setdefault(_shape_key(inputs), []).append(index)
        done, calls = 0, len(groups)

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancelled.is_set():
                raise _Cancelled
            if progress is not None:  # num_timesteps counts the steps left after img2img strength
                progress((done + min(1.0, (step + 1) / max(1, pipe.num_timesteps))) / calls)
            return tensors

        results: list[list[Any]] = [[] for _ in jobs]
        extra = self._image_inputs(first)
        for indices in groups.values():
            members = [jobs[index] for index in indices]
            # CPU generators: the same pixels on any device, and image i of a job starts from the
            # noise of a one-image job with seed + i, in a batch or alone.
            generators = [
                torch.Generator("cpu").manual_seed(job.seed + i) for job in members for i in range(job.image_num)
            ]
            images = pipe(
                **_stacked([prompts[index] for index in indices], [job.image_num for job in members]),
                **extra,
                **self._guidance(first),
                num_inference_steps=first.steps,
                num_images_per_prompt=1,
                generator=generators,
                callback_on_step_end=on_step_end,
                output_type="pil",
            ).images
            offset = 0
            for index, job in zip(indices, members, strict=True):
                results[index] = list(images[offset : offset + job.image_num])
                offset += job.image_num
            done += 1
        return results

    def _image_inputs(self, job: ImageGeneration) -> dict[str, Any]:
        size = (job.width, job.height)
        inputs: dict[str, Any] = {"width": job.width, "height": job.height}
        if job.init_image is not None:
            inputs["image"] = _decode_image(job.init_image, size, "RGB", "init_image")
            if job.mask_image is not None:
                inputs["mask_image"] = _decode_image(job.mask_image, size, "L", "mask_image")
            if job.strength is not None:
                inputs["strength"] = job.strength
        return inputs

    def _guidance(self, job: ImageGeneration) -> dict[str, Any]:
        if self.family is FlowFamily.QWEN_IMAGE:
            return {"true_cfg_scale": job.guidance_scale}
        if self.family is FlowFamily.FLUX_SCHNELL:
            return {}  # no guidance embedding: the pipeline would ignore it
        return {"guidance_scale": job.guidance_scale}

    def _encode(self, job: ImageGeneration) -> dict[str, Any]:
        """The pipeline's prompt arguments for one image of `job`, as embeddings."""
        pipe, device = self._pipe, self._pipe._execution_device
        if self.family in (FlowFamily.FLUX_SCHNELL, FlowFamily.FLUX_DEV):
            # schnell was trained with T5 windows of 256 tokens, dev with 512.
            length = 256 if self.family is FlowFamily.FLUX_SCHNELL else 512
            embeds, pooled, _ = pipe.encode_prompt(job.prompt, None, device=device, max_sequence_length=length)
            return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if self.family in (FlowFamily.SD3, FlowFamily.SD35):
            embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
                job.prompt,
                None,
                None,
                device=device,
                do_classifier_free_guidance=job.guidance_scale > 1,
                negative_prompt=job.negative_prompt,
            )
            return {
                "prompt_embeds": embeds,
                "pooled_prompt_embeds": pooled,
                "negative_prompt_embeds": negative,
                "negative_pooled_prompt_embeds": negative_pooled,
            }
        inputs = dict(zip(("prompt_embeds", "prompt_embeds_mask"), _qwen_encoding(pipe, job.prompt), strict=True))
        if job.guidance_scale > 1:  # true CFG runs the transformer on the negative prompt too
            negative = _qwen_encoding(pipe, job.negative_prompt or _QWEN_EMPTY_NEGATIVE)
            inputs.update(zip(("negative_prompt_embeds", "negative_prompt_embeds_mask"), negative, strict=True))
        return inputs

    def _pipeline_for(self, job: ImageGeneration) -> Any:
        if job.init_image is None:
            return self._pipe
        kind = "img2img" if job.mask_image is None else "inpaint"
        if kind not in self._derived:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = AutoPipelineForImage2Image if kind == "img2img" else AutoPipelineForInpainting
            derived = auto.from_pipe(self._pipe)  # shares the modules: no second copy of the weights
            derived.set_progress_bar_config(disable=True)
            self._derived[kind] = derived
        return self._derived[kind]
