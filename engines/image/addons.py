"""What a checkpoint's catalog entry adds to its pipelines: spare VAEs, ControlNets, an SDXL refiner.

Each is named in the checkpoint's options: `vaes` and `controlnets` map request names to diffusers
folders (`AutoencoderKL`, `ControlNetModel`; a VAE may also be one .safetensors file), `refiner`
is the folder of a `StableDiffusionXLImg2ImgPipeline`. Each is loaded the first time a job asks for
it and kept until the checkpoint unloads, counted in its memory.

A VAE is swapped onto the pipelines of one job and the checkpoint's own put back afterwards, so a
job without `sd_vae` never sees another job's choice. The refiner shares the checkpoint's VAE, as
diffusers' ensemble-of-experts example does: real SDXL refiners ship the base's VAE anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engines.base import ModelSpec

log = logging.getLogger("omniserve.engines.diffusers")


class PipelineAddons:
    """The loaded extras of one checkpoint; every method runs on the worker thread, in the job's device turn."""

    def __init__(self, spec: ModelSpec, device: str) -> None:
        self.spec = spec
        self.device = device
        self._vaes: dict[str, Any] = {}
        self._controlnets: dict[str, Any] = {}
        self._refiner: Any = None
        # The refiner's own scheduler class and config, kept before any job replaces its scheduler.
        self.refiner_scheduler: tuple[Any, Any] | None = None

    def modules(self) -> list[Any]:
        """Every loaded torch module that the checkpoint's pipeline does not already hold."""
        modules = [*self._vaes.values(), *self._controlnets.values()]
        if self._refiner is not None:
            modules += [m for key, m in self._refiner.components.items() if key != "vae" and hasattr(m, "parameters")]
        return modules

    def clear(self) -> None:
        self._vaes.clear()
        self._controlnets.clear()
        self._refiner = None
        self.refiner_scheduler = None

    def vae(self, name: str, like: Any) -> Any:
        """The VAE `name` of options.vaes, in the dtype of the checkpoint's own VAE `like`."""
        if name not in self._vaes:
            from diffusers import AutoencoderKL

            path = Path(self.spec.options["vaes"][name])
            log.info("loading VAE %s for %s", name, self.spec.name)
            if path.is_file():
                vae = AutoencoderKL.from_single_file(str(path), dtype=like.dtype)
            else:
                vae = AutoencoderKL.from_pretrained(str(path), dtype=like.dtype)
            self._vaes[name] = vae.to(self.device).eval()
        return self._vaes[name]

    def controlnet(self, name: str, dtype: Any) -> Any:
        if name not in self._controlnets:
            from diffusers import ControlNetModel

            log.info("loading ControlNet %s for %s", name, self.spec.name)
            path = self.spec.options["controlnets"][name]
            self._controlnets[name] = ControlNetModel.from_pretrained(path, dtype=dtype).to(self.device).eval()
        return self._controlnets[name]

    def refiner(self, base: Any) -> Any:
        """The SDXL refiner pipeline of options.refiner, sharing `base`'s VAE."""
        if self._refiner is None:
            from diffusers import StableDiffusionXLImg2ImgPipeline

            log.info("loading the refiner of %s", self.spec.name)
            refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
                self.spec.options["refiner"], vae=base.vae, dtype=base.unet.dtype
            )
            refiner.set_progress_bar_config(disable=True)
            self.refiner_scheduler = type(refiner.scheduler), refiner.scheduler.config
            self._refiner = refiner.to(self.device)
        return self._refiner


@contextmanager
def swapped_vae(pipes: list[Any], vae: Any | None) -> Iterator[None]:
    """`vae` on each of `pipes` for the duration; each pipe's own VAE back afterwards, even on error."""
    if vae is None:
        yield
        return
    originals = [pipe.vae for pipe in pipes]
    try:
        for pipe in pipes:
            pipe.vae = vae
        yield
    finally:
        for pipe, original in zip(pipes, originals, strict=True):
            pipe.vae = original
