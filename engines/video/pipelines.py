"""DiffusersVideoEngine: text-to-video (AnimateDiff, Wan 2.1/2.2, LTX-Video) and image-to-video
(Stable Video Diffusion, Wan, LTX-Video) on diffusers, behind the VideoEngine protocol.

Which pipeline a catalog entry runs: `options.pipeline` (a diffusers class name) if given;
AnimateDiffPipeline when `options.motion_adapter` names a MotionAdapter folder to put over the SD
checkpoint at `path`; otherwise the class named in the folder's model_index.json. The class
gives the model's family (engines/video/families.py): its frame and size rules, its defaults and
the features it honours. AnimateDiff gets prompt travel, closed loops and clip skip; any other
diffusers video pipeline runs with the arguments its __call__ accepts and refuses the features
it cannot honour.

Like the image engines, a job runs on a worker thread under the device's lock.
"""

from __future__ import annotations

import functools
import inspect
import io
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from engines.base import ModelSpec, ProgressCallback, VideoGeneration, VideoMode, VideoResult
from engines.errors import InvalidJob
from engines.image.adapters import activate_loras, add_embeddings
from engines.image.devices import pipeline_bytes, release_memory
from engines.threads import run_cancellable
from engines.video.families import (
    ANIMATEDIFF,
    SVD_MOTION_BUCKET_ID,
    SVD_NOISE_AUG_STRENGTH,
    VideoFamily,
    check_job,
    model_defaults,
    pipeline_class_name,
)
from engines.workpools import WorkPool, run_in

log = logging.getLogger("omniserve.engines.video")

# Pipelines that animate an input image; every other video pipeline starts from text.
_IMAGE_TO_VIDEO = {"StableVideoDiffusionPipeline", "I2VGenXLPipeline"}
# AnimateDiff's motion modules were trained on 16-frame clips; longer videos are denoised in
# overlapping windows of this many frames (FreeNoise), `_CONTEXT_STRIDE` frames apart.
_CONTEXT_FRAMES = 16
_CONTEXT_STRIDE = 4


class _Cancelled(Exception):
    """Raised from the step callback to stop a pipeline whose caller has gone away."""


def _invalid(message: str, field: str) -> InvalidJob:
    """A refusal of the job's `field` (a VideoGeneration or VideoPrompt field)."""
    return InvalidJob(message, field)


def _hold_prompt(start: int, end: int, start_embeds: Any, end_embeds: Any) -> Any:
    """FreeNoise's prompt "interpolation" between two keyframes, as a step: every frame of a
    segment is conditioned on that segment's own prompt; frame `end` belongs to the next one."""
    import torch

    return torch.cat([start_embeds] * (end - start) + [end_embeds])


def _to_uint8(frames: Any) -> Any:
    """The first video of a pipeline's "np" output as uint8 (frames, height, width, 3)."""
    import numpy as np

    video = np.asarray(frames[0], dtype=np.float32)
    return (video.clip(0.0, 1.0) * 255.0).round().astype(np.uint8)


class DiffusersVideoEngine:
    device_serial: Literal[True] = True  # one job at a time on the device (DeviceSerialEngine)

    def __init__(self, spec: ModelSpec, *, device: str = "cpu") -> None:
        self.spec = spec
        self.device = device
        self._pipe: Any = None
        self._scheduler_config: Any = None
        self._call_parameters: set[str] = set()
        self._loras: set[str] = set()
        self._embeddings: set[str] = set()
        self._class_name = pipeline_class_name(spec)
        self.defaults = model_defaults(spec)

    @property
    def mode(self) -> VideoMode:
        explicit = self.spec.options.get("mode")
        if explicit in ("text-to-video", "image-to-video"):
            return explicit
        image = self._class_name in _IMAGE_TO_VIDEO or "ImageToVideo" in self._class_name
        return "image-to-video" if image else "text-to-video"

    @property
    def family(self) -> VideoFamily:
        return self.defaults.family

    @property
    def fps(self) -> int:
        return self.defaults.fps

    @property
    def native_size(self) -> tuple[int, int]:
        return self.defaults.native_size

    @property
    def _is_animatediff(self) -> bool:
        return self._class_name == ANIMATEDIFF

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    async def load(self) -> None:
        if self._pipe is None:
            self._pipe = await run_in(WorkPool.ENGINE, self._load_pipeline)
            self._scheduler_config = self._pipe.scheduler.config
            self._call_parameters = set(inspect.signature(self._pipe.__call__).parameters)

    def _load_pipeline(self) -> Any:
        import diffusers
        import torch

        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        pipeline_class = getattr(diffusers, self._class_name, None) if self._class_name else None
        if pipeline_class is None:
            raise ValueError(f"model {self.spec.name}: no diffusers video pipeline named {self._class_name!r}")
        log.info("loading video model %s (%s) with diffusers", self.spec.name, self._class_name)
        components: dict[str, Any] = {}
        if self.spec.options.get("motion_adapter"):
            adapter = diffusers.MotionAdapter.from_pretrained(self.spec.options["motion_adapter"], dtype=dtype)
            components["motion_adapter"] = adapter
        pipe = pipeline_class.from_pretrained(self.spec.path, dtype=dtype, **components)
        pipe.set_progress_bar_config(disable=True)
        pipe = pipe.to(self.device)
        if self._is_animatediff:
            # The motion modules were trained on a linear beta schedule and are sampled with
            # DDIM in AnimateDiff's own recipe; the checkpoint's scheduler is rebuilt that way.
            pipe.scheduler = diffusers.DDIMScheduler.from_config(
                pipe.scheduler.config,
                beta_schedule="linear",
                clip_sample=False,
                timestep_spacing="linspace",
                steps_offset=1,
            )
            # FreeNoise swaps the motion modules' transformer blocks for windowed ones. Done
            # once, before any LoRA is loaded, so later jobs only change the window settings.
            pipe.enable_free_noise(
                context_length=self._context_frames,
                context_stride=_CONTEXT_STRIDE,
                prompt_interpolation_callback=_hold_prompt,
            )
        return pipe

    @property
    def _context_frames(self) -> int:
        return int(self.spec.options.get("context_frames", _CONTEXT_FRAMES))

    async def unload(self) -> None:
        self._pipe, self._scheduler_config = None, None
        self._loras.clear()
        self._embeddings.clear()
        release_memory(self.device)

    def memory_bytes(self) -> int:
        return self.spec.memory_bytes if self._pipe is None else pipeline_bytes(self._pipe)

    async def health(self) -> bool:
        return self._pipe is not None

    async def generate(self, job: VideoGeneration, progress: ProgressCallback | None = None) -> VideoResult:
        """The frames of `job`, drawn from a CPU generator seeded with `job.seed`."""
        if self._pipe is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        self._validate(job)  # before the worker thread starts: bad input fails at once
        frames = await run_cancellable(functools.partial(self._run, job, progress))
        return VideoResult(frames=frames, seed=job.seed)

    def _validate(self, job: VideoGeneration) -> None:
        text = self.mode == "text-to-video"
        if text and not job.prompts:
            raise _invalid(f"{self.spec.name} makes videos from text: give prompts", "prompts")
        if not text and job.image is None:
            raise _invalid(f"{self.spec.name} animates an image: give image_file", "image")
        if job.frame_count < 1:
            raise _invalid("a video needs at least one frame", "prompts" if text else "num_frames")
        check_job(self.family, self.spec.name, job, text_to_video=text)
        factor = getattr(self._pipe, "vae_scale_factor", 8)
        for param, value in (("width", job.width), ("height", job.height)):
            if value % factor:
                raise _invalid(f"{param} must be a multiple of {factor}", param)
        for param, names, known in (
            ("loras", [lora.name for lora in job.loras], self.spec.options.get("loras", {})),
            ("embeddings", job.embeddings, self.spec.options.get("embeddings", {})),
        ):
            for name in names:
                if name not in known:
                    raise _invalid(f"{name!r} is not available for model {self.spec.name}", param)
            if len(set(names)) != len(names):
                raise _invalid(f"{param} lists a name twice", param)
        text_encoder = getattr(self._pipe, "text_encoder", None)
        if job.clip_skip is not None and text_encoder is not None:
            layers = text_encoder.config.num_hidden_layers
            if not 1 <= job.clip_skip <= layers:
                raise _invalid(f"clip_skip must be between 1 and {layers} for this model", "clip_skip")
        tokenizer = getattr(self._pipe, "tokenizer", None)
        if tokenizer is not None and self._is_animatediff:
            # diffusers would cut a long prompt at CLIP's window without a word; refuse it instead.
            texts = [("prompts", p.prompt) for p in job.prompts] + [("negative_prompt", job.negative_prompt)]
            for param, text_value in texts:
                count = len(tokenizer(text_value).input_ids)
                if count > tokenizer.model_max_length:
                    raise _invalid(f"a prompt is {count} tokens; this model takes {tokenizer.model_max_length}", param)

    def _run(self, job: VideoGeneration, progress: ProgressCallback | None, cancelled: threading.Event) -> Any:
        import torch

        inputs = self._inputs(job)
        frames = job.frame_count
        shift = _LoopShift(frames, job.steps) if job.closed_loop else None

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancelled.is_set():
                raise _Cancelled
            if progress is not None:
                progress(min(1.0, (step + 1) / max(1, getattr(pipe, "num_timesteps", job.steps) or job.steps)))
            return shift.apply(step, tensors) if shift is not None else tensors

        if cancelled.is_set():
            raise _Cancelled
        pipe = self._pipe
        # A fresh scheduler per run (per-run state), with the job's flow-matching shift if any.
        shift_config = {} if job.flow_shift is None else {"shift": job.flow_shift}
        pipe.scheduler = type(pipe.scheduler).from_config(self._scheduler_config, **shift_config)
        self._activate_loras(job)
        self._add_embeddings(job)
        if self._is_animatediff:
            context = min(frames, self._context_frames)
            pipe.enable_free_noise(
                context_length=context,
                context_stride=min(_CONTEXT_STRIDE, context),
                prompt_interpolation_callback=_hold_prompt,
            )
        with self._clip_skip(job.clip_skip):
            result = pipe(
                **inputs,
                num_inference_steps=job.steps,
                generator=torch.Generator("cpu").manual_seed(job.seed),
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"] if shift else ["latents"],
                output_type="np",
            )
        return _to_uint8(result.frames)

    def _inputs(self, job: VideoGeneration) -> dict[str, Any]:
        """The pipeline's arguments for `job`: those its __call__ accepts."""
        candidates: dict[str, Any] = {"num_frames": job.frame_count, "width": job.width, "height": job.height}
        if job.guidance_scale is not None:
            candidates["guidance_scale"] = job.guidance_scale
        # LTX-Video conditions on the frame rate (frame_rate), SVD too (fps).
        candidates["frame_rate"] = job.fps
        if job.image is not None:
            candidates["image"] = _fitted_image(job.image, (job.width, job.height))
            candidates.update(
                fps=job.fps,
                motion_bucket_id=SVD_MOTION_BUCKET_ID if job.motion_bucket_id is None else job.motion_bucket_id,
                noise_aug_strength=SVD_NOISE_AUG_STRENGTH if job.noise_aug_strength is None else job.noise_aug_strength,
            )
            if self.family.text_prompt_with_image:
                candidates["prompt"] = job.image_prompt
                candidates["negative_prompt"] = job.negative_prompt or None
        if self._is_animatediff:
            # Prompt travel: each segment starts at the frame after the previous one ends.
            prompts, start = {}, 0
            for segment in job.prompts:
                prompts[start] = segment.prompt
                start += segment.frames
            candidates["prompt"] = prompts
            candidates["negative_prompt"] = job.negative_prompt or None
        elif job.prompts:
            candidates["prompt"] = job.prompts[0].prompt
            candidates["negative_prompt"] = job.negative_prompt or None
        if "decode_chunk_size" in self.spec.options:
            candidates["decode_chunk_size"] = int(self.spec.options["decode_chunk_size"])
        accepted = {key: value for key, value in candidates.items() if key in self._call_parameters}
        ignored = sorted(set(candidates) - set(accepted))
        if ignored:
            log.debug("%s takes no %s; left out", self._class_name, ", ".join(ignored))
        return accepted

    @contextmanager
    def _clip_skip(self, clip_skip: int | None) -> Iterator[None]:
        """A1111's clip skip: the prompt is encoded by all but the last `clip_skip - 1` layers of
        the text encoder, then its final norm. The layers are set aside for the call (in the
        job's device turn), because diffusers' own clip-skip path reaches for an attribute that
        transformers 5 removed from CLIPTextModel."""
        encoder = getattr(getattr(self._pipe, "text_encoder", None), "encoder", None)
        if not clip_skip or clip_skip == 1 or encoder is None:
            yield
            return
        import torch

        layers = encoder.layers
        encoder.layers = torch.nn.ModuleList(list(layers)[: len(layers) - (clip_skip - 1)])
        try:
            yield
        finally:
            encoder.layers = layers

    def _activate_loras(self, job: VideoGeneration) -> None:
        activate_loras(self._pipe, self._loras, self.spec.options.get("loras", {}), job.loras)

    def _add_embeddings(self, job: VideoGeneration) -> None:
        add_embeddings(self._pipe, self._embeddings, self.spec.options.get("embeddings", {}), job.embeddings)


class _LoopShift:
    """Closed loops: between denoising steps the frames (latents and their prompt embeddings)
    are rotated in time, so the motion modules see the last frame next to the first in some
    steps and denoise across that seam like any other pair of neighbours. The seam visits
    evenly spread positions; after the last step the frames are back in their order."""

    def __init__(self, frames: int, steps: int) -> None:
        self.frames, self.steps = frames, steps
        self.offset = 0

    def apply(self, step: int, tensors: dict[str, Any]) -> dict[str, Any]:
        last = step + 1 >= self.steps
        target = 0 if last else ((step + 1) * self.frames // self.steps) % self.frames
        delta, self.offset = target - self.offset, target
        if delta == 0:
            return tensors
        tensors["latents"] = tensors["latents"].roll(delta, dims=2)  # (batch, channels, frames, h, w)
        embeds = tensors.get("prompt_embeds")
        if embeds is not None and embeds.shape[0] % self.frames == 0:
            import torch

            # One row per frame, [negative..., positive...] under guidance: rotate each half.
            chunks = embeds.split(self.frames, dim=0)
            tensors["prompt_embeds"] = torch.cat([chunk.roll(delta, dims=0) for chunk in chunks])
        return tensors


def _fitted_image(data: bytes, size: tuple[int, int]) -> Any:
    """The conditioning image cropped to the aspect ratio of `size` around its centre, then
    resized to it; an image of that aspect already is only resized."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as image:
            return ImageOps.fit(image.convert("RGB"), size, Image.Resampling.LANCZOS)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _invalid("image_file is not a readable PNG, JPEG or WebP image", "image") from exc
