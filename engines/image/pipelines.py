"""DiffusersImageEngine: SD 1.x and SDXL checkpoints behind the ImageEngine protocol.

A pipeline call is seconds of CPU-bound work, so it runs on a worker thread and the event loop
keeps serving. Jobs run one at a time per device, in the scheduler's device turns (the engine is
a DeviceSerialEngine): two pipelines on one device only slow each other down, and a job sets
shared pipeline state (scheduler, active LoRAs, a swapped-in VAE) for its duration, which is
safe because no second job of this engine can run until the lease of the first has ended.
Prompts go through compel's embedding providers (A1111 emphasis, prompts longer than CLIP's 77-token
window), weighted and chunked in linear time (engines/image/prompt_encoding.py); without compel they
go to diffusers as they are, and a prompt over the window is refused, never truncated.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import re
import threading
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal

from engines.base import ImageGeneration, ImageResult, ModelSpec, ProgressCallback
from engines.errors import InvalidJob
from engines.image.adapters import activate_loras, add_embeddings
from engines.image.addons import PipelineAddons, swapped_vae
from engines.image.control import PREPROCESSORS, control_arguments
from engines.image.devices import parameter_bytes, pipeline_bytes, release_memory
from engines.image.hires import (
    LATENT_UPSCALER,
    hires_upscalers,
    load_hires_upscaler,
    upscale_images,
    upscale_latents,
)
from engines.image.prompt_encoding import encode_weighted
from engines.image.samplers import SAMPLERS, make_scheduler
from engines.threads import run_cancellable
from engines.workpools import WorkPool, run_in

log = logging.getLogger("omniserve.engines.diffusers")
# The most 77-token windows a prompt may fill (catalog option max_prompt_chunks): 64 windows are
# 4,800 tokens, more than the server's default prompt limit (limits.max_prompt_chars) can hold.
MAX_PROMPT_CHUNKS = 64


class _Cancelled(Exception):
    """Raised from the step callback to stop a pipeline whose caller has gone away."""


def _invalid(message: str, field: str) -> InvalidJob:
    """A refusal of the job's `field` (an ImageGeneration field)."""
    return InvalidJob(message, field)


# A1111 emphasis tokens: escaped bracket or backslash, a lone backslash, an opening bracket,
# ":weight)" closing a weighted group, a closing bracket, plain text, a stray colon.
_EMPHASIS = re.compile(r"\\[()\[\]\\]|\\|[(\[]|:\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)|[)\]]|[^\\()\[\]:]+|:")


def parse_emphasis(prompt: str) -> list[tuple[str, float]]:
    """Split an A1111 prompt into (text, weight) runs: (x) is x1.1, [x] is x/1.1, (x:w) is xw; nesting multiplies."""
    runs: list[list[Any]] = []  # [text, weight]
    groups: list[tuple[str, int]] = []  # open bracket, index of the first run inside it

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in _EMPHASIS.finditer(prompt):
        token, weight = match.group(0), match.group(1)
        opener = groups[-1][0] if groups else None
        if token in ("(", "["):
            groups.append((token, len(runs)))
        elif opener == "(" and (weight is not None or token == ")"):
            scale(groups.pop()[1], float(weight) if weight is not None else 1.1)
        elif opener == "[" and token == "]":
            scale(groups.pop()[1], 1 / 1.1)
        else:  # text, escapes, and brackets that close nothing
            runs.append([token[1:] if len(token) == 2 and token[0] == "\\" else token, 1.0])
    for opener, start in groups:  # unclosed groups still count, as in A1111
        scale(start, 1.1 if opener == "(" else 1 / 1.1)
    merged: list[tuple[str, float]] = []
    for text, weight in runs:
        # Whitespace alone holds no tokens and compel cannot place it: it joins the run before,
        # which keeps words apart where the runs are joined again (SDXL's pooled text).
        if merged and (merged[-1][1] == weight or not text.strip()):
            merged[-1] = (merged[-1][0] + text, merged[-1][1])
        elif text.strip():
            merged.append((text, weight))
    return merged or [("", 1.0)]


@functools.cache
def _compel_provider() -> Any:
    """compel's embeddings provider with A1111 clip skip, or None when compel is missing."""
    try:
        from compel import EmbeddingsProvider
    except ImportError as exc:
        log.warning("compel unavailable (%s): prompts are neither weighted nor longer than 77 tokens", exc)
        return None

    class ClipSkipProvider(EmbeddingsProvider):
        # compel itself reads only the last or the penultimate layer; this reads `skip` layers
        # below the last (hidden_states[-1] is the last layer before CLIP's final norm).
        def __init__(self, tokenizer: Any, encoder: Any, manager: Any, *, skip: int, normalize: bool) -> None:
            super().__init__(tokenizer, encoder, textual_inversion_manager=manager, truncate=False)
            self.skip, self.normalize = skip, normalize

        def _encode_token_ids_to_embeddings(self, token_ids: Any, attention_mask: Any = None) -> Any:
            out = self.text_encoder(token_ids, attention_mask, output_hidden_states=True, return_dict=True)
            hidden = out.hidden_states[-1 - self.skip]
            if not self.normalize:
                return hidden
            # transformers 5 flattened CLIPTextModel (no .text_model); compel's and diffusers' own
            # clip-skip paths still look for it and fail with AttributeError.
            encoder: Any = self.text_encoder
            return getattr(encoder, "text_model", encoder).final_layer_norm(hidden)

    return ClipSkipProvider


def _text_key(job: ImageGeneration) -> tuple[str, str, int | None]:
    """What a job's prompt encoding depends on, besides the adapters its batch shares."""
    return job.prompt, job.negative_prompt, job.clip_skip


def _encode_prompts(
    pipe: Any, prompt: str, negative: str, skip: int, manager: Any, max_chunks: int = MAX_PROMPT_CHUNKS
) -> dict[str, Any]:
    """prompt_embeds (and SDXL's pooled embeds) for both prompts, through compel's providers and
    the linear weighting of engines/image/prompt_encoding.py."""
    import torch

    provider_class = _compel_provider()
    xl = getattr(pipe, "text_encoder_2", None) is not None
    encoders = []
    if getattr(pipe, "text_encoder", None) is not None:  # an SDXL refiner has only the second encoder
        encoders.append((pipe.tokenizer, pipe.text_encoder, manager))
    if xl:  # the textual-inversion manager speaks the first tokenizer only
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2, None))
    # SD 1.x conditions on the normalized last layer, SDXL on each encoder's raw penultimate one.
    providers = [provider_class(t, e, m, skip=skip + xl, normalize=not xl) for t, e, m in encoders]
    runs = {"prompt": parse_emphasis(prompt), "negative_prompt": parse_emphasis(negative)}
    embeds = {
        key: [encode_weighted(p, r, device=pipe.device, max_chunks=max_chunks, field=key) for p in providers]
        for key, r in runs.items()
    }
    # CFG batches positive and negative together, so both must be equally long: pad in whole
    # 77-token chunks with the empty prompt's embedding, as compel does.
    length = max(e.shape[1] for per in embeds.values() for e in per)

    def pad(e: Any, provider: Any) -> Any:
        empty = provider.empty_z.to(e.dtype)
        return torch.cat([e, empty.repeat(1, (length - e.shape[1]) // empty.shape[1], 1)], dim=1)

    out = {
        f"{key}_embeds": torch.cat([pad(e, p) for e, p in zip(per, providers, strict=True)], -1)
        for key, per in embeds.items()
    }
    if xl:  # pooled text of the second encoder; like compel and A1111, of the first 77 tokens
        plain = {key: "".join(t for t, _ in r) for key, r in runs.items()}
        out["pooled_prompt_embeds"] = providers[-1].get_pooled_embeddings([plain["prompt"]], device=pipe.device)
        out["negative_pooled_prompt_embeds"] = providers[-1].get_pooled_embeddings([plain["negative_prompt"]])
        if not negative and pipe.config.get("force_zeros_for_empty_prompt", False):
            # What SDXL itself does for no negative prompt: zeros, not the encoding of "".
            for key in ("negative_prompt_embeds", "negative_pooled_prompt_embeds"):
                out[key] = torch.zeros_like(out[key])
    return out


def _decode_image(data: bytes, size: tuple[int, int], mode: str, field: str) -> Any:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert(mode).resize(size, Image.Resampling.LANCZOS)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        raise _invalid(f"{field} is not a readable PNG, JPEG or WebP image", field) from exc


def _stack_shape(inputs: dict[str, Any]) -> Hashable:
    """What prompt inputs must share to be stacked into one call (see `_stacked`)."""
    if "prompt" in inputs:  # plain text: SDXL encodes a missing negative prompt as zeros, "" as text
        return ("text", inputs["negative_prompt"] is None)
    return tuple((key, tuple(value.shape)) for key, value in sorted(inputs.items()))


def _stacked(inputs: list[dict[str, Any]], counts: list[int]) -> dict[str, Any]:
    """One call's prompt arguments for several jobs' `_prompt_inputs`, job j repeated counts[j] times."""
    if "prompt" in inputs[0]:
        negatives = [one["negative_prompt"] for one in inputs]
        return {
            "prompt": [one["prompt"] for one, count in zip(inputs, counts, strict=True) for _ in range(count)],
            "negative_prompt": None
            if all(negative is None for negative in negatives)
            else [negative or "" for negative, count in zip(negatives, counts, strict=True) for _ in range(count)],
            "clip_skip": inputs[0]["clip_skip"],  # part of the batch key
        }
    import torch

    return {
        key: torch.cat(
            [one[key].repeat(count, *[1] * (one[key].dim() - 1)) for one, count in zip(inputs, counts, strict=True)]
        )
        for key in inputs[0]
    }


def _switch_point(switch_at: float, job: ImageGeneration) -> float:
    """diffusers' denoising_end (base) and denoising_start (refiner) for A1111's switch_at.

    switch_at is the share of the steps the base runs. txt2img denoises the whole schedule, so
    it is the same fraction; img2img only the last `strength` of it (its init image is noised
    to that level), so the switch falls at strength x (1 - switch_at) of the noise left.
    """
    if job.init_image is None or job.strength is None:
        return switch_at
    return 1 - job.strength * (1 - switch_at)


class DiffusersImageEngine:
    """One diffusers text-to-image pipeline; img2img, inpainting and ControlNet pipelines share its modules."""

    device_serial: Literal[True] = True  # one job at a time on the device (DeviceSerialEngine)

    def __init__(self, spec: ModelSpec, *, device: str = "cpu") -> None:
        self.spec = spec
        self.device = device
        self._pipe: Any = None
        self._derived: dict[str, Any] = {}  # "img2img" / "inpaint" -> pipeline built with from_pipe
        self._control_pipes: dict[tuple[str, ...], Any] = {}  # ControlNet names -> img2img pipeline
        self._addons = PipelineAddons(spec, device)
        # The checkpoint's own scheduler: the default sampler, and the base of every other one.
        self._scheduler_class: Any = None
        self._scheduler_config: Any = None
        self._loras: set[str] = set()  # adapters loaded into the modules so far
        self._embeddings: set[str] = set()  # textual-inversion tokens added so far
        self._hires_nets: dict[str, Any] = {}  # hires-fix upscaler name -> its ESRGAN net (or None)

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    async def load(self) -> None:
        if self._pipe is None:
            self._pipe = await run_in(WorkPool.ENGINE, self._load_pipeline)
            self._scheduler_class, self._scheduler_config = type(self._pipe.scheduler), self._pipe.scheduler.config

    def _load_pipeline(self) -> Any:
        import torch
        from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline, StableDiffusionXLPipeline

        # Half precision only where kernels for it exist; CPU runs float32.
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        path = Path(self.spec.path)
        log.info("loading image model %s with diffusers", self.spec.name)
        if path.suffix == ".safetensors":
            # One-file (A1111-style) checkpoint. diffusers takes the component configs from the hub
            # unless options.config names a local diffusers folder of the same architecture.
            xl = self.spec.options.get("architecture") == "sdxl"
            single = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
            pipe = single.from_single_file(str(path), config=self.spec.options.get("config"), dtype=dtype)
        else:
            class_name = json.loads((path / "model_index.json").read_text()).get("_class_name")
            known = {cls.__name__: cls for cls in (StableDiffusionPipeline, StableDiffusionXLPipeline)}
            pipe = known.get(class_name, AutoPipelineForText2Image).from_pretrained(str(path), dtype=dtype)
        pipe.set_progress_bar_config(disable=True)  # progress goes to the callback, not to stderr
        return pipe.to(self.device)

    async def unload(self) -> None:
        self._pipe, self._scheduler_class, self._scheduler_config = None, None, None
        self._derived.clear()
        self._control_pipes.clear()
        self._addons.clear()
        self._loras.clear()
        self._embeddings.clear()
        self._hires_nets.clear()
        release_memory(self.device)

    def memory_bytes(self) -> int:
        if self._pipe is None:
            return self.spec.memory_bytes
        nets = [net for net in self._hires_nets.values() if net is not None]
        return pipeline_bytes(self._pipe) + parameter_bytes([*self._addons.modules(), *nets])

    async def health(self) -> bool:
        return self._pipe is not None

    async def generate(self, job: ImageGeneration, progress: ProgressCallback | None = None) -> ImageResult:
        """Images for `job`; image i is drawn from a CPU generator seeded with `job.seed + i`."""
        if self._pipe is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        self._validate(job)  # before the worker thread starts: bad input fails at once
        images = await run_cancellable(functools.partial(self._run, job, progress))
        return ImageResult(images=images, seed=job.seed)

    def batch_key(self, job: ImageGeneration) -> Hashable | None:
        """What jobs must share to run as one call: plain txt2img with the same settings and adapters.

        Prompts, negative prompts, seeds and image counts may differ. Samplers that draw noise from
        a seed of their own (DPM++ SDE) take one seed per call, so their jobs run alone.
        """
        if job.init_image is not None or job.hires_fix is not None or job.refiner_switch_at is not None:
            return None
        sampler = SAMPLERS.get(job.sampler) if job.sampler is not None else None
        if job.controlnets or (job.sampler is not None and (sampler is None or sampler.own_noise_seed)):
            return None
        loras = tuple((lora.name, lora.strength) for lora in job.loras)
        embeddings = tuple(sorted(job.embeddings))
        return (
            job.width,
            job.height,
            job.steps,
            job.guidance_scale,
            job.sampler,
            job.clip_skip,
            loras,
            embeddings,
            job.vae,
        )

    async def generate_batch(
        self, jobs: list[ImageGeneration], progress: ProgressCallback | None = None
    ) -> list[ImageResult]:
        """`generate` for several jobs of one batch_key in one pipeline call: the same pixels per job and seed."""
        if self._pipe is None:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        keys = {self.batch_key(job) for job in jobs}
        if None in keys or len(keys) > 1:
            raise ValueError("the jobs of one batch must share a batch_key")
        for job in jobs:
            self._validate(job)
        images = await run_cancellable(functools.partial(self._run_batch, jobs, progress))
        return [ImageResult(images=found, seed=job.seed) for job, found in zip(jobs, images, strict=True)]

    def _run_batch(
        self, jobs: list[ImageGeneration], progress: ProgressCallback | None, cancelled: threading.Event
    ) -> list[list[Any]]:
        import torch

        first = jobs[0]  # every job shares its size, steps, sampler, guidance and adapters
        done, calls = 0, 1

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancelled.is_set():
                raise _Cancelled
            if progress is not None:
                progress((done + min(1.0, (step + 1) / max(1, pipe.num_timesteps))) / calls)
            return tensors

        results: list[list[Any]] = [[] for _ in jobs]
        if cancelled.is_set():
            raise _Cancelled
        pipe = self._pipe
        self._activate_loras(first)
        self._add_embeddings(first)
        # Jobs with the same text (the usual case: one prompt, many seeds) share one encoding.
        encoded: dict[tuple[str, str, int | None], dict[str, Any]] = {}
        for job in jobs:
            if (text := _text_key(job)) not in encoded:
                encoded[text] = self._prompt_inputs(pipe, job)
        prompts = [encoded[_text_key(job)] for job in jobs]
        # Prompt inputs stack only when equally shaped (a long prompt's embedding is longer, and
        # padding a short one would change its picture): one call per shape.
        groups: dict[Hashable, list[int]] = {}
        for index, inputs in enumerate(prompts):
            groups.setdefault(_stack_shape(inputs), []).append(index)
        calls = len(groups)
        vae = self._addons.vae(first.vae, pipe.vae) if first.vae is not None else None
        with swapped_vae([pipe], vae):
            for indices in groups.values():
                members = [jobs[index] for index in indices]
                # Image i of a job starts from the noise of its seed + i, exactly as in `generate`.
                generators = [
                    torch.Generator("cpu").manual_seed(job.seed + i) for job in members for i in range(job.image_num)
                ]
                pipe.scheduler = self._scheduler(first)
                images = pipe(
                    **_stacked([prompts[index] for index in indices], [job.image_num for job in members]),
                    width=first.width,
                    height=first.height,
                    num_inference_steps=first.steps,
                    guidance_scale=first.guidance_scale,
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

    def _validate(self, job: ImageGeneration) -> None:
        if job.sampler is not None and job.sampler not in SAMPLERS:
            raise _invalid(f"unknown sampler {job.sampler!r}; known: {', '.join(SAMPLERS)}", "sampler")
        options = self.spec.options
        for param, names, known in (
            ("loras", [lora.name for lora in job.loras], options.get("loras", {})),
            ("embeddings", job.embeddings, options.get("embeddings", {})),
        ):
            for name in names:
                if name not in known:
                    raise _invalid(f"{name!r} is not available for model {self.spec.name}", param)
            if len(set(names)) != len(names):
                raise _invalid(f"{param} lists a name twice", param)
        if job.vae is not None and job.vae not in options.get("vaes", {}):
            raise _invalid(f"VAE {job.vae!r} is not available for model {self.spec.name}", "vae")
        factor = self._pipe.vae_scale_factor
        for param, value in (("width", job.width), ("height", job.height)):
            if value % factor:
                raise _invalid(f"{param} must be a multiple of {factor}", param)
        layers = self._pipe.text_encoder.config.num_hidden_layers - (1 if self._is_xl else 0)
        if job.clip_skip is not None and not 1 <= job.clip_skip <= layers:
            raise _invalid(f"clip_skip must be between 1 and {layers} for this model", "clip_skip")
        if job.mask_image is not None and job.init_image is None:
            raise _invalid("mask_image needs an init_image to inpaint", "init_image")
        if job.init_image is not None and job.strength is not None and int(job.steps * job.strength) < 1:
            raise _invalid("steps * strength must leave at least one denoising step", "strength")
        self._validate_hires(job, factor)
        self._validate_refiner(job)
        self._validate_controlnets(job)

    def _validate_hires(self, job: ImageGeneration, factor: int) -> None:
        hires = job.hires_fix
        if hires is None:
            return
        if job.init_image is not None:
            raise _invalid("hires_fix applies to text-to-image only", "hires_fix")
        known = hires_upscalers(self.spec.options)
        if hires.upscaler not in known:
            raise _invalid(f"unknown upscaler {hires.upscaler!r}; known: {', '.join(known)}", "hires_fix")
        for param, target, base in (("width", hires.width, job.width), ("height", hires.height, job.height)):
            if target % factor or target < base:
                raise _invalid(f"hires_fix {param} must be a multiple of {factor}, at least {base}", "hires_fix")
        if not 0 < hires.strength <= 1 or int(job.steps * hires.strength) < 1:
            raise _invalid("hires_fix strength must be in (0, 1] and leave a denoising step", "hires_fix")

    def _validate_refiner(self, job: ImageGeneration) -> None:
        if job.refiner_switch_at is None:
            return
        if not self._is_xl or "refiner" not in self.spec.options:
            raise _invalid(f"model {self.spec.name} has no refiner", "refiner_switch_at")
        if job.mask_image is not None or job.controlnets:
            raise _invalid("the refiner applies to text-to-image and plain img2img only", "refiner_switch_at")
        if job.init_image is not None and job.strength is None:
            raise _invalid("img2img with the refiner needs its strength", "strength")
        if not 0 < job.refiner_switch_at < 1:
            raise _invalid("refiner switch_at must be between 0 and 1", "refiner_switch_at")

    def _validate_controlnets(self, job: ImageGeneration) -> None:
        if not job.controlnets:
            return
        if job.init_image is None or job.mask_image is not None:
            raise _invalid("ControlNet applies to img2img only", "controlnets")
        known = self.spec.options.get("controlnets", {})
        for unit in job.controlnets:
            if unit.name not in known:
                raise _invalid(f"ControlNet {unit.name!r} is not available for model {self.spec.name}", "controlnets")
            if unit.preprocessor not in PREPROCESSORS:
                raise _invalid(f"unknown preprocessor {unit.preprocessor!r}", "controlnets")
            if not 0 <= unit.guidance_start < unit.guidance_end <= 1 or unit.strength < 0:
                raise _invalid("ControlNet needs 0 <= guidance_start < guidance_end <= 1, strength >= 0", "controlnets")

    @property
    def _is_xl(self) -> bool:
        return getattr(self._pipe, "text_encoder_2", None) is not None

    def _run(self, job: ImageGeneration, progress: ProgressCallback | None, cancelled: threading.Event) -> list[Any]:
        import torch

        size = (job.width, job.height)
        inputs: dict[str, Any] = {}
        if job.init_image is not None:
            inputs["image"] = _decode_image(job.init_image, size, "RGB", "init_image")
            if job.mask_image is not None:
                inputs["mask_image"] = _decode_image(job.mask_image, size, "L", "mask_image")
            if job.strength is not None:
                inputs["strength"] = job.strength
        if job.init_image is None or job.mask_image is not None:
            # img2img takes its size from the (resized) image and has no width/height arguments.
            inputs.update(width=job.width, height=job.height)
        if job.controlnets:
            inputs.update(control_arguments(job.controlnets, size))
        hires, switch_at = job.hires_fix, job.refiner_switch_at
        # Progress runs once over all passes: base, refiner, hires fix.
        passes = 1 + (switch_at is not None) + (hires is not None)
        done = 0

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancelled.is_set():
                raise _Cancelled
            if progress is not None:  # num_timesteps counts the steps left after img2img strength
                progress((done + min(1.0, (step + 1) / max(1, pipe.num_timesteps))) / passes)
            return tensors

        def stop_if_cancelled(*_: int) -> None:
            if cancelled.is_set():
                raise _Cancelled

        def run(pipe: Any, **arguments: Any) -> Any:
            # Every pass draws fresh CPU generators: the same pixels on any device, and image i of
            # a batch starts from the noise of a one-image job with seed + i.
            generators = [torch.Generator("cpu").manual_seed(job.seed + i) for i in range(job.image_num)]
            return pipe(
                **arguments,
                num_inference_steps=job.steps,
                guidance_scale=job.guidance_scale,
                num_images_per_prompt=job.image_num,
                generator=generators,
                callback_on_step_end=on_step_end,
            ).images

        # Latents go straight from pass to pass where the next one can take them.
        latent_hires = hires is not None and hires.upscaler == LATENT_UPSCALER
        if cancelled.is_set():
            raise _Cancelled
        pipe = self._pipeline_for(job)
        pipe.scheduler = self._scheduler(job)
        self._activate_loras(job)
        self._add_embeddings(job)
        prompt = self._prompt_inputs(self._pipe, job)
        refiner = self._addons.refiner(self._pipe) if switch_at is not None else None
        hires_pipe = self._derived_pipeline("img2img") if hires is not None else None
        vae = self._addons.vae(job.vae, self._pipe.vae) if job.vae is not None else None
        with swapped_vae([p for p in (pipe, refiner, hires_pipe) if p is not None], vae):
            switch = None if switch_at is None else _switch_point(switch_at, job)
            ends = {} if switch is None else {"denoising_end": switch}
            first_type = "latent" if switch_at is not None or latent_hires else "pil"
            images = run(pipe, **prompt, **inputs, **ends, output_type=first_type)
            done += 1
            if refiner is not None and switch is not None:
                refiner.scheduler = self._scheduler(job, self._addons.refiner_scheduler)
                refined = self._prompt_inputs(refiner, job)
                output_type = "latent" if latent_hires else "pil"
                images = run(refiner, **refined, image=images, denoising_start=switch, output_type=output_type)
                done += 1
            if hires is not None and hires_pipe is not None:
                target = (hires.width, hires.height)
                if latent_hires:
                    images = upscale_latents(images, target, self._pipe.vae_scale_factor)
                else:
                    net = self._hires_net(hires.upscaler)
                    images = upscale_images(images, target, net, device=self.device, on_tile=stop_if_cancelled)
                hires_pipe.scheduler = self._scheduler(job)
                images = run(hires_pipe, **prompt, image=images, strength=hires.strength, output_type="pil")
        return list(images)

    def _hires_net(self, name: str) -> Any:
        """The ESRGAN network options.upscalers names for a hires-fix upscaler, loaded once; None: Lanczos."""
        if name not in self._hires_nets:
            self._hires_nets[name] = load_hires_upscaler(self.spec.options, name, self.device)
        return self._hires_nets[name]

    def _scheduler(self, job: ImageGeneration, own: tuple[Any, Any] | None = None) -> Any:
        """A fresh scheduler for the job's sampler (schedulers keep per-run state), on `own` or the checkpoint's."""
        scheduler_class, config = own or (self._scheduler_class, self._scheduler_config)
        if job.sampler is None:
            return scheduler_class.from_config(config)
        return make_scheduler(job.sampler, config, seed=job.seed)

    def _pipeline_for(self, job: ImageGeneration) -> Any:
        if job.init_image is None:
            return self._pipe
        if job.controlnets:
            return self._control_pipeline(tuple(unit.name for unit in job.controlnets))
        return self._derived_pipeline("img2img" if job.mask_image is None else "inpaint")

    def _derived_pipeline(self, kind: str) -> Any:
        if kind not in self._derived:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = AutoPipelineForImage2Image if kind == "img2img" else AutoPipelineForInpainting
            derived = auto.from_pipe(self._pipe)  # shares the modules: no second copy of the weights
            derived.set_progress_bar_config(disable=True)
            self._derived[kind] = derived
        return self._derived[kind]

    def _control_pipeline(self, names: tuple[str, ...]) -> Any:
        if names not in self._control_pipes:
            from diffusers import StableDiffusionControlNetImg2ImgPipeline, StableDiffusionXLControlNetImg2ImgPipeline

            nets = [self._addons.controlnet(name, self._pipe.unet.dtype) for name in names]
            control_class: Any = StableDiffusionControlNetImg2ImgPipeline
            if self._is_xl:
                control_class = StableDiffusionXLControlNetImg2ImgPipeline
            # Several ControlNets become one MultiControlNetModel inside the pipeline.
            derived = control_class.from_pipe(self._pipe, controlnet=nets[0] if len(nets) == 1 else nets)
            derived.set_progress_bar_config(disable=True)
            self._control_pipes[names] = derived
        return self._control_pipes[names]

    def _activate_loras(self, job: ImageGeneration) -> None:
        activate_loras(self._pipe, self._loras, self.spec.options.get("loras", {}), job.loras)

    def _add_embeddings(self, job: ImageGeneration) -> None:
        add_embeddings(self._pipe, self._embeddings, self.spec.options.get("embeddings", {}), job.embeddings)

    def _prompt_inputs(self, pipe: Any, job: ImageGeneration) -> dict[str, Any]:
        """Prompt arguments for `pipe`: the checkpoint's own pipeline or its refiner."""
        skip = (job.clip_skip or 1) - 1  # A1111 numbering: clip_skip 1 is the last layer
        if _compel_provider() is not None:
            from compel import DiffusersTextualInversionManager

            # The manager expands multi-vector embedding tokens; without embeddings it only costs time.
            # Embeddings live in the checkpoint's first tokenizer, which a refiner does not have.
            manager = DiffusersTextualInversionManager(pipe) if self._embeddings and pipe is self._pipe else None
            max_chunks = int(self.spec.options.get("max_prompt_chunks", MAX_PROMPT_CHUNKS))
            return _encode_prompts(pipe, job.prompt, job.negative_prompt, skip, manager, max_chunks)
        found: list[Any] = [getattr(pipe, name, None) for name in ("tokenizer", "tokenizer_2")]
        tokenizers = [tokenizer for tokenizer in found if tokenizer is not None]
        for param, text in (("prompt", job.prompt), ("negative_prompt", job.negative_prompt)):
            for tokenizer in tokenizers:
                count = len(tokenizer(pipe.maybe_convert_prompt(text, tokenizer)).input_ids)
                if count > tokenizer.model_max_length:
                    raise _invalid(f"{param} is {count} tokens; this server takes {tokenizer.model_max_length}", param)
        # diffusers counts clip_skip as layers skipped below the last; None keeps the default.
        return {"prompt": job.prompt, "negative_prompt": job.negative_prompt or None, "clip_skip": skip or None}
