"""Image to prompt: a captioning model describes an image as a prompt that could draw it (/v3 img2prompt).

The model is the catalog's captioner chosen by settings (image_tools.caption_model); the body
names none. The image is checked as task inputs are (format, bytes, pixels) and against
image_tools.img2prompt_max_side, decoded on the media pool; the caption is generated under the
scheduler, at interactive priority, like any synchronous engine call.
"""

from __future__ import annotations

from engines.base import CaptionEngine, ModelKind
from engines.image.caption_demo import CAPTION_MODEL
from engines.scheduler import Scheduler
from engines.workpools import WorkPool, run_in
from server.capabilities.calls import SAME_NAMES, WireNames, engine_call
from server.capabilities.image_tool_inputs import require_model, tool_image, tool_model
from server.settings import ImageToolSettings

OPERATION = "img2prompt"


class ImagePrompts:
    def __init__(self, scheduler: Scheduler, settings: ImageToolSettings) -> None:
        self.scheduler = scheduler
        self.model = tool_model(
            scheduler, settings.caption_model, ModelKind.CAPTION, CAPTION_MODEL, "image_tools.caption_model"
        )
        self.max_side = settings.img2prompt_max_side

    async def describe(self, image: str, names: WireNames = SAME_NAMES) -> str:
        """The prompt for the base64 ``image``: the captioner's words about it."""
        model = require_model(self.model, "caption")
        _, decoded = await run_in(WorkPool.MEDIA, tool_image, image, names("image"), self.max_side)
        async with engine_call(self.scheduler, model, CaptionEngine, OPERATION, names=names) as (engine, record):
            caption = await engine.caption(decoded)
            record.usage(output_tokens=caption.generated_tokens)
        return caption.text
