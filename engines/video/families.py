"""The video model families the diffusers engine runs, and the rules each puts on a job.

A family is known from the catalog alone (the pipeline class a spec runs), so a request is
checked against it before it queues, without loading the model; the engine checks again before
it runs. The rules follow the pipelines' own checks:

- Wan 2.1/2.2 (WanPipeline, WanImageToVideoPipeline): sides multiples of 16 (x8 VAE, 2x2
  patches; check_inputs refuses others), frames 4k+1 (the VAE keeps one frame in four after the
  first; the pipeline silently rounds other counts down).
- LTX-Video (LTXPipeline, LTXImageToVideoPipeline): sides multiples of 32 (check_inputs), frames
  8k+1 (x8 in time; the decoded clip has (latent frames - 1) x 8 + 1 frames whatever was asked).
- HunyuanVideo (HunyuanVideoPipeline): as Wan (x8/x4 VAE, 2x2 patches).
- AnimateDiff and Stable Video Diffusion: sides multiples of the VAE's x8, any frame count.

What a family cannot honour (prompt travel, closed loops, clip skip, SVD's micro-conditioning
on a model without it, a prompt for SVD) is refused naming the field, never silently dropped;
SVD's default conditioning values pass, as novita-client sends them in every img2video body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engines.base import ModelSpec, VideoGeneration
from engines.errors import InvalidJob

ANIMATEDIFF = "AnimateDiffPipeline"
SVD = "StableVideoDiffusionPipeline"
# Stable Video Diffusion's micro-conditioning where a job leaves it open (Novita's defaults).
SVD_MOTION_BUCKET_ID = 127
SVD_NOISE_AUG_STRENGTH = 0.02


@dataclass(frozen=True)
class VideoFamily:
    name: str
    # What /v3/model lists as the family's base_model (catalog option "base_model" overrides it,
    # e.g. "Wan 2.2" for a Wan 2.2 checkpoint, which runs the same pipeline class).
    base_model: str
    # Frames must be frame_step * k + 1 (a step of 1 takes any count).
    frame_step: int
    side_multiple: int
    # Defaults for what a client leaves out (catalog options "steps", "guidance_scale", "fps",
    # "width"/"height" and "frames" override them per model).
    steps: int
    guidance_scale: float | None
    fps: int
    native_size: tuple[int, int]
    frames: int
    # Optional job features the family honours.
    prompt_travel: bool = False  # several prompt segments, each over its own frames
    closed_loop: bool = False
    clip_skip: bool = False
    text_prompt_with_image: bool = False  # image-to-video also takes a prompt (and guidance)
    svd_conditioning: bool = False  # motion_bucket_id and cond_aug
    flow_shift: bool = False  # a flow-matching scheduler whose shift a job may set

    def fits_frames(self, frames: int) -> bool:
        return frames >= 1 and (frames - 1) % self.frame_step == 0

    def nearest_frames(self, frames: int) -> int:
        """The valid frame count nearest `frames` (at least 1): for APIs that ask in seconds."""
        steps = max(0, round((frames - 1) / self.frame_step))
        return steps * self.frame_step + 1

    def frames_rule(self) -> str:
        return "any number of" if self.frame_step == 1 else f"{self.frame_step}k+1"


ANIMATEDIFF_FAMILY = VideoFamily(
    name="animatediff",
    base_model="AnimateDiff",
    frame_step=1,
    side_multiple=8,
    steps=20,
    guidance_scale=7.5,
    fps=8,
    native_size=(512, 512),
    frames=16,
    prompt_travel=True,
    closed_loop=True,
    clip_skip=True,
)
SVD_FAMILY = VideoFamily(
    name="svd",
    base_model="SVD",
    frame_step=1,
    side_multiple=8,
    steps=20,
    guidance_scale=None,
    fps=6,
    native_size=(1024, 576),
    frames=14,
    svd_conditioning=True,
)
# Wan's 480p checkpoints: 832x480 at 16 frames a second; 50 steps, guidance 5 (diffusers' and
# Wan's own defaults). The default clip is two seconds, within the img2video frame limit.
WAN_FAMILY = VideoFamily(
    name="wan",
    base_model="Wan 2.1",
    frame_step=4,
    side_multiple=16,
    steps=50,
    guidance_scale=5.0,
    fps=16,
    native_size=(832, 480),
    frames=33,
    text_prompt_with_image=True,
    flow_shift=True,
)
# LTX-Video 0.9: 704x480 (multiples of 32) at 24 frames a second; 50 steps, guidance 3.
LTX_FAMILY = VideoFamily(
    name="ltx",
    base_model="LTX-Video",
    frame_step=8,
    side_multiple=32,
    steps=50,
    guidance_scale=3.0,
    fps=24,
    native_size=(704, 480),
    frames=49,
    text_prompt_with_image=True,
)
# HunyuanVideo: 4k+1 frames (x4 in time), multiples of 16 (x8 VAE, 2x2 patches); guidance is
# its embedded (distilled) guidance, 6 by default; 24 frames a second.
HUNYUAN_FAMILY = VideoFamily(
    name="hunyuan",
    base_model="HunyuanVideo",
    frame_step=4,
    side_multiple=16,
    steps=50,
    guidance_scale=6.0,
    fps=24,
    native_size=(1280, 720),
    frames=129,
    flow_shift=True,
)
# Any other diffusers video pipeline: no rule beyond the VAE's x8, features refused.
OTHER_FAMILY = VideoFamily(
    name="diffusers",
    base_model="",
    frame_step=1,
    side_multiple=8,
    steps=20,
    guidance_scale=None,
    fps=6,
    native_size=(512, 512),
    frames=16,
)

_BY_CLASS = {
    ANIMATEDIFF: ANIMATEDIFF_FAMILY,
    SVD: SVD_FAMILY,
    "WanPipeline": WAN_FAMILY,
    "WanImageToVideoPipeline": WAN_FAMILY,
    "LTXPipeline": LTX_FAMILY,
    "LTXImageToVideoPipeline": LTX_FAMILY,
    "HunyuanVideoPipeline": HUNYUAN_FAMILY,
}


def family_of(pipeline_class: str) -> VideoFamily:
    return _BY_CLASS.get(pipeline_class, OTHER_FAMILY)


def pipeline_class_name(spec: ModelSpec) -> str:
    """The diffusers pipeline class a catalog entry runs: `options.pipeline` if given;
    AnimateDiffPipeline when `options.motion_adapter` names a MotionAdapter folder to put over
    the SD checkpoint at `path`; otherwise the class named in the folder's model_index.json."""
    if spec.options.get("pipeline"):
        return str(spec.options["pipeline"])
    if spec.options.get("motion_adapter"):
        return ANIMATEDIFF
    try:
        index = json.loads(Path(spec.path, "model_index.json").read_text())
    except (OSError, ValueError):
        # Not built or not readable yet; loading reports the real problem. Text-to-video is
        # the safer guess: it never asks a client for an image the model would not use.
        return ""
    return str(index.get("_class_name", ""))


@dataclass(frozen=True)
class ModelDefaults:
    """What a request that leaves a field out gets from this model: its catalog options
    ("steps", "guidance_scale", "fps", "frames", "width", "height"), else its family's."""

    family: VideoFamily
    steps: int
    guidance_scale: float | None
    fps: int
    frames: int
    native_size: tuple[int, int]


def model_defaults(spec: ModelSpec) -> ModelDefaults:
    family = family_of(pipeline_class_name(spec))
    options = spec.options
    guidance = options.get("guidance_scale", family.guidance_scale)
    width, height = family.native_size
    return ModelDefaults(
        family=family,
        steps=int(options.get("steps", family.steps)),
        guidance_scale=None if guidance is None else float(guidance),
        fps=int(options.get("fps", family.fps)),
        frames=int(options.get("frames", family.frames)),
        native_size=(int(options.get("width", width)), int(options.get("height", height))),
    )


def _refuse(message: str, field: str) -> InvalidJob:
    return InvalidJob(message, field)


def check_job(family: VideoFamily, model: str, job: VideoGeneration, *, text_to_video: bool) -> None:
    """Refuse what `family` cannot run as asked, naming the job's field (VideoGeneration's names:
    frames are counted in "prompts" for text-to-video and "num_frames" for image-to-video)."""
    frames_field = "prompts" if text_to_video else "num_frames"
    if not family.fits_frames(job.frame_count):
        message = (
            f"{model} ({family.name}) makes videos of {family.frames_rule()} frames "
            f"(e.g. {family.nearest_frames(job.frame_count)}), not {job.frame_count}."
        )
        raise _refuse(message, frames_field)
    for side, value in (("width", job.width), ("height", job.height)):
        if value % family.side_multiple:
            raise _refuse(f"{side} must be a multiple of {family.side_multiple} for {model} ({family.name}).", side)
    unsupported = (
        ("prompts", len(job.prompts) > 1 and not family.prompt_travel, "several prompt segments (prompt travel)"),
        ("closed_loop", job.closed_loop and not family.closed_loop, "closed loops"),
        ("clip_skip", job.clip_skip is not None and job.clip_skip > 1 and not family.clip_skip, "clip_skip"),
    )
    if job.flow_shift is not None and not family.flow_shift:
        raise _refuse(f"{model} ({family.name}) has no flow-matching shift to set.", "flow_shift")
    for field, asked, what in unsupported:
        if asked:
            raise _refuse(f"{model} ({family.name}) does not support {what}.", field)
    if job.image is not None:
        if not family.text_prompt_with_image:
            for field, asked in (
                ("image_prompt", bool(job.image_prompt)),
                ("negative_prompt", bool(job.negative_prompt)),
                ("guidance_scale", job.guidance_scale is not None),
            ):
                if asked:
                    raise _refuse(
                        f"{model} ({family.name}) animates the image alone: it takes no text or guidance.", field
                    )
        if not family.svd_conditioning:
            # SVD's own defaults pass: novita-client sends them with every img2video body.
            for field, asked in (
                ("motion_bucket_id", job.motion_bucket_id not in (None, SVD_MOTION_BUCKET_ID)),
                ("noise_aug_strength", job.noise_aug_strength not in (None, SVD_NOISE_AUG_STRENGTH)),
            ):
                if asked:
                    message = f"{field} is Stable Video Diffusion's conditioning; {model} ({family.name}) has none."
                    raise _refuse(message, field)


def base_model(spec: ModelSpec) -> str:
    """The base_model /v3/model lists for a video model: the catalog's `base_model` option, else
    its family's, told apart where one pipeline class runs two generations (Wan 2.2's two-expert
    checkpoints have a second transformer). Blocking: may read model_index.json."""
    if given := spec.options.get("base_model"):
        return str(given)
    family = family_of(pipeline_class_name(spec))
    if family is WAN_FAMILY:
        try:
            index = json.loads(Path(spec.path, "model_index.json").read_text())
        except (OSError, ValueError):
            index = {}
        if (index.get("transformer_2") or [None])[0] is not None:
            return "Wan 2.2"
    return family.base_model
