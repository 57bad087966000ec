"""A1111 sampler names (what Novita's `sampler_name` carries) mapped to diffusers schedulers.

The mapping follows diffusers' own table of A1111 equivalents. A scheduler is always built
from the checkpoint's scheduler config, so the model's training schedule (betas, timestep
spacing, prediction type) is kept and only the sampling algorithm changes.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sampler:
    # Class name in `diffusers`, resolved when first used: listing or validating names must not
    # pay for importing diffusers and torch.
    scheduler: str
    overrides: dict[str, Any] = field(default_factory=dict)
    karras: bool = False  # Karras sigma spacing, A1111's "Karras" suffix
    # Draws its noise outside the pipeline's generator (a Brownian tree); needs a seed of its own.
    own_noise_seed: bool = False


_2M = {"algorithm_type": "dpmsolver++"}
_SDE_2M = {"algorithm_type": "sde-dpmsolver++"}

SAMPLERS: dict[str, Sampler] = {
    "Euler": Sampler("EulerDiscreteScheduler"),
    "Euler a": Sampler("EulerAncestralDiscreteScheduler"),
    "Heun": Sampler("HeunDiscreteScheduler"),
    "DPM2": Sampler("KDPM2DiscreteScheduler"),
    "DPM2 a": Sampler("KDPM2AncestralDiscreteScheduler"),
    # The base config may carry another algorithm (a checkpoint shipping DPM++ 2M SDE): pin it.
    "DPM++ 2M": Sampler("DPMSolverMultistepScheduler", _2M),
    "DPM++ 2M Karras": Sampler("DPMSolverMultistepScheduler", _2M, karras=True),
    "DPM++ SDE": Sampler("DPMSolverSDEScheduler", own_noise_seed=True),  # needs torchsde
    "DPM++ SDE Karras": Sampler("DPMSolverSDEScheduler", karras=True, own_noise_seed=True),
    "DPM++ 2M SDE": Sampler("DPMSolverMultistepScheduler", _SDE_2M),
    "DPM++ 2M SDE Karras": Sampler("DPMSolverMultistepScheduler", _SDE_2M, karras=True),
    "LMS": Sampler("LMSDiscreteScheduler"),  # needs scipy (integrates its coefficients)
    "LMS Karras": Sampler("LMSDiscreteScheduler", karras=True),
    "DDIM": Sampler("DDIMScheduler"),
    # A1111's PLMS: the pseudo Runge-Kutta warm-up steps are skipped, as Stable Diffusion does.
    "PNDM": Sampler("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": Sampler("UniPCMultistepScheduler"),
    "LCM": Sampler("LCMScheduler"),
    "DEIS": Sampler("DEISMultistepScheduler"),
}


def sampler_names() -> list[str]:
    return list(SAMPLERS)


def make_scheduler(name: str, base_config: Any, *, seed: int | None = None) -> Any:
    """A fresh scheduler for sampler `name`, built on a pipeline's scheduler config.

    `seed` feeds samplers that draw noise outside the pipeline's generator (DPM++ SDE);
    without it they would reseed from the global RNG and the same job would differ per run.
    Raises KeyError for a name not in SAMPLERS.
    """
    sampler = SAMPLERS[name]
    overrides = dict(sampler.overrides)
    # Set either way where the class knows it: a checkpoint's config may ship Karras sigmas on,
    # and "Euler" must not silently become "Euler Karras".
    scheduler_class = getattr(importlib.import_module("diffusers"), sampler.scheduler)
    if "use_karras_sigmas" in inspect.signature(scheduler_class.__init__).parameters:
        overrides["use_karras_sigmas"] = sampler.karras
    if sampler.own_noise_seed and seed is not None:
        overrides["noise_sampler_seed"] = seed
    return scheduler_class.from_config(base_config, **overrides)
