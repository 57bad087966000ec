"""Reimagine: a variation of an image, drawn by an image-variation pipeline (/v3 reimagine).

The model is the catalog's variation pipeline chosen by settings (image_tools.reimagine_model);
the body names none, nor a seed: each call draws one, so two calls give two variations. The
input is checked as task inputs are (format, bytes, pixels) and against
image_tools.reimagine_max_side; the answer has the input's size, encoded as the client asked.
It is charged as one image (accounts.price_per_image).
"""

from __future__ import annotations

import base64
import secrets

from engines.base import ModelKind, VariationEngine, VariationJob
from engines.image.variation_demo import VARIATION_MODEL
from engines.scheduler import Scheduler
from engines.workpools import WorkPool, run_in
from schemas.limits import SEED_LIMIT
from server.accounts import UNMETERED, Meter
from server.capabilities.calls import SAME_NAMES, WireNames, engine_call
from server.capabilities.image_tool_inputs import require_model, tool_image, tool_model
from server.capabilities.images.encoding import encode_image
from server.settings import ImageToolSettings

OPERATION = "reimagine"


class Reimaginer:
    def __init__(self, scheduler: Scheduler, settings: ImageToolSettings) -> None:
        self.scheduler = scheduler
        self.model = tool_model(
            scheduler, settings.reimagine_model, ModelKind.VARIATION, VARIATION_MODEL, "image_tools.reimagine_model"
        )
        self.max_side = settings.reimagine_max_side

    async def reimagine(
        self,
        image: str,
        image_type: str,
        names: WireNames = SAME_NAMES,
        meter: Meter = UNMETERED,
        seed: int | None = None,
    ) -> str:
        """A variation of the base64 ``image``, as base64 of a ``image_type`` file (png, jpeg, webp).
        ``seed`` None draws one."""
        model = require_model(self.model, "reimagine")
        data, _ = await run_in(WorkPool.MEDIA, tool_image, image, names("image"), self.max_side)
        job = VariationJob(image=data, seed=secrets.randbelow(SEED_LIMIT) if seed is None else seed)
        charge = meter.images(1)
        call = engine_call(self.scheduler, model, VariationEngine, OPERATION, names=names, charge=charge)
        async with call as (engine, record):
            variation = await engine.vary(job)
            record.set(
                {
                    "omniserve.image.width": variation.width,
                    "omniserve.image.height": variation.height,
                    "gen_ai.request.seed": job.seed,
                }
            )
            record.produced(images=1)
            charge.add(1)
        encoded = await run_in(WorkPool.MEDIA, encode_image, variation, image_type)
        return base64.b64encode(encoded).decode("ascii")
