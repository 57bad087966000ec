"""The synchronous image tools: background removal, background replacement, object cleanup.

- Background removal: the segmentation model's foreground mask becomes the image's alpha channel.
- Background replacement: the same mask, inverted, is what the inpainting model repaints from the
  prompt; the foreground is then laid back over the result through the (soft) mask, so the subject
  keeps its own pixels.
- Cleanup: the inpainting model repaints the masked area from an empty prompt at strength 1 (the
  area is drawn anew, not varied); only the masked pixels of the input change.

Repainting runs at most `image_tools.inpaint_max_side` pixels a side (aspect kept, sides multiples
of 16), and its result is resized back: every answer has the input's size. The models are fixed by
settings (`image_tools.segmentation_model`, `image_tools.inpainting_model`), not by the request.
Decoding, compositing and encoding run on the media pool; the models run under the scheduler.
"""

from __future__ import annotations

import io
import secrets
from typing import Any

from engines.base import ImageGeneration, ModelKind, SegmentationEngine
from engines.image.segmentation_demo import SEGMENTATION_MODEL as DEMO_SEGMENTATION_MODEL
from engines.registry import CatalogError
from engines.scheduler import Scheduler
from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode
from server.capabilities.calls import SAME_NAMES, WireNames, engine_call
from server.capabilities.images.encoding import PIL_FORMATS
from server.capabilities.images.generation import ImageGenerator
from server.capabilities.images.inputs import open_input_image
from server.settings import ImageToolSettings

DEMO_INPAINTING_MODEL = "demo-sd"  # engines/image/demo.py; the SD demo inpaints
# Repainting sizes: multiples of 16 suit the SD, SDXL and 16-pixel-patch pipelines alike.
WORK_MULTIPLE = 16
MIN_WORK_SIDE = 64
# What JPEG answers show where remove-background made pixels transparent.
JPEG_BACKGROUND = (255, 255, 255)


def tool_model(scheduler: Scheduler, configured: str | None, kind: ModelKind, demo: str, setting: str) -> str | None:
    """The catalog model behind a tool: the setting, else the demo model, else the catalog's first
    model of ``kind``; None when the tool is off ("" or no such model). A setting that names no
    model of ``kind`` stops the server at startup."""
    if configured == "":
        return None
    if configured is not None:
        engine = scheduler.registry.get(configured)
        if engine is None:
            raise CatalogError(f"image_tools.{setting} {configured!r} is not in the catalog")
        if engine.spec.kind is not kind:
            raise CatalogError(
                f"image_tools.{setting} {configured!r} is a {engine.spec.kind.value} model, not a {kind.value} model"
            )
        return engine.spec.name
    if (engine := scheduler.registry.get(demo)) is not None and engine.spec.kind is kind:
        return engine.spec.name
    return next((engine.spec.name for engine in scheduler.registry if engine.spec.kind is kind), None)


def work_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size repainting runs at: the image's, shrunk to ``max_side`` a side, in multiples of 16."""
    scale = min(1.0, max_side / max(width, height))

    def side(value: int) -> int:
        return max(MIN_WORK_SIDE, int(value * scale) // WORK_MULTIPLE * WORK_MULTIPLE)

    return side(width), side(height)


def encode_tool_image(image: Any, image_type: str) -> bytes:
    """PNG and WebP keep an alpha channel; JPEG has none, so transparency is flattened onto white."""
    from PIL import Image

    if image_type == "jpeg" and image.mode == "RGBA":
        flat = Image.new("RGB", image.size, JPEG_BACKGROUND)
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    elif image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=PIL_FORMATS[image_type])
    return buffer.getvalue()


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def with_alpha(image: Any, mask: Any) -> Any:
    """``image`` as RGBA with ``mask`` (an "L" image of its size) as its alpha channel; where
    the input was already transparent it stays so (the two alphas multiply)."""
    from PIL import ImageChops

    rgba = image.convert("RGBA")
    alpha = ImageChops.multiply(rgba.getchannel("A"), mask) if image.mode == "RGBA" else mask
    rgba.putalpha(alpha)
    return rgba


def repainted_into(original: Any, painted: Any, mask: Any) -> Any:
    """``painted`` (resized to ``original``'s size) where ``mask`` is white, ``original`` where it
    is black, blended between: pixels outside the mask stay exactly the input's."""
    from PIL import Image

    if painted.size != original.size:
        painted = painted.resize(original.size, Image.Resampling.LANCZOS)
    return Image.composite(painted.convert("RGB"), original.convert("RGB"), mask)


class ImageEditor:
    def __init__(self, scheduler: Scheduler, images: ImageGenerator, settings: ImageToolSettings) -> None:
        self.scheduler = scheduler
        self.images = images
        self.settings = settings
        self.segmentation_model = tool_model(
            scheduler,
            settings.segmentation_model,
            ModelKind.SEGMENTATION,
            DEMO_SEGMENTATION_MODEL,
            "segmentation_model",
        )
        self.inpainting_model = tool_model(
            scheduler, settings.inpainting_model, ModelKind.IMAGE, DEMO_INPAINTING_MODEL, "inpainting_model"
        )

    # -- the tools -----------------------------------------------------------------------------

    async def remove_background(self, data: bytes, image_type: str, names: WireNames = SAME_NAMES) -> bytes:
        """The image, encoded as ``image_type``, with its background transparent."""
        segmenter = self._require(self.segmentation_model, "remove-background", "segmentation_model")
        image = await run_in(WorkPool.MEDIA, self.open_image, data, "image", names)
        mask = await self._segment(segmenter, image, names)
        cut_out = await run_in(WorkPool.MEDIA, with_alpha, image, mask)
        return await run_in(WorkPool.MEDIA, encode_tool_image, cut_out, image_type)

    async def replace_background(
        self, data: bytes, prompt: str, image_type: str, names: WireNames = SAME_NAMES
    ) -> bytes:
        """The image with its background repainted from ``prompt``, the foreground kept."""
        segmenter = self._require(self.segmentation_model, "replace-background", "segmentation_model")
        painter = self._require(self.inpainting_model, "replace-background", "inpainting_model")
        image = await run_in(WorkPool.MEDIA, self.open_replace_image, data, names)
        foreground = await self._segment(segmenter, image, names)
        background = await run_in(WorkPool.MEDIA, _inverted, foreground)
        painted = await self._repaint(painter, image, background, prompt, names)
        # Laid through the soft mask, the subject keeps its own pixels and its edges blend.
        result = await run_in(WorkPool.MEDIA, repainted_into, image, painted, background)
        return await run_in(WorkPool.MEDIA, encode_tool_image, result, image_type)

    async def cleanup(self, data: bytes, mask_data: bytes, image_type: str, names: WireNames = SAME_NAMES) -> bytes:
        """The image with its masked area (white in the mask) repainted to match its surroundings."""
        painter = self._require(self.inpainting_model, "cleanup", "inpainting_model")
        image = await run_in(WorkPool.MEDIA, self.open_image, data, "image", names)
        mask = await run_in(WorkPool.MEDIA, self.open_mask, mask_data, image.size, names)
        if await run_in(WorkPool.MEDIA, mask.getbbox) is None:  # nothing marked: nothing to repaint
            return await run_in(WorkPool.MEDIA, lambda: encode_tool_image(image.convert("RGB"), image_type))
        painted = await self._repaint(painter, image, mask, "", names)
        result = await run_in(WorkPool.MEDIA, repainted_into, image, painted, mask)
        return await run_in(WorkPool.MEDIA, encode_tool_image, result, image_type)

    # -- inputs (blocking: the media pool) ------------------------------------------------------

    def open_image(self, data: bytes, field: str, names: WireNames = SAME_NAMES) -> Any:
        """A decoded input within the tools' limits, or a 400 naming ``field``."""
        settings = self.settings
        image = open_input_image(
            data, names(field), max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        )
        return image if image.mode in ("RGB", "RGBA") else image.convert("RGBA" if "A" in image.mode else "RGB")

    def open_replace_image(self, data: bytes, names: WireNames = SAME_NAMES) -> Any:
        """replace-background's input, within its own, smaller limits too."""
        image = self.open_image(data, "image", names)
        width, height = image.size
        settings = self.settings
        side = settings.replace_background_max_side
        if width > side or height > side:
            message = f"The image is {width}x{height}; neither side may exceed {side}."
            raise names.invalid("image", message, ErrorCode.INVALID_IMAGE_SIZE)
        if width * height > settings.replace_background_max_pixels:
            message = f"The image is {width}x{height}; at most {settings.replace_background_max_pixels} pixels."
            raise names.invalid("image", message, ErrorCode.IMAGE_EXCEEDS_MAX_RESOLUTION)
        return image

    def open_mask(self, data: bytes, size: tuple[int, int], names: WireNames = SAME_NAMES) -> Any:
        """cleanup's mask as an "L" image (its brightness; white removes), of the image's size."""
        mask = open_input_image(
            data, names("mask"), max_bytes=self.settings.max_image_bytes, max_pixels=self.settings.max_image_pixels
        )
        if mask.size != size:
            message = f"The mask is {mask.size[0]}x{mask.size[1]}; it must have the image's size, {size[0]}x{size[1]}."
            raise names.invalid("mask", message, ErrorCode.INVALID_IMAGE_SIZE)
        return mask.convert("L")

    # -- the models ------------------------------------------------------------------------------

    @staticmethod
    def _require(model: str | None, tool: str, setting: str) -> str:
        if model is None:
            raise ApiError(
                ErrorCode.API_NOT_FOUND, f"{tool} is not available on this server (image_tools.{setting} is off)."
            )
        return model

    async def _segment(self, model: str, image: Any, names: WireNames) -> Any:
        call = engine_call(self.scheduler, model, SegmentationEngine, "image_segmentation", names=names)
        async with call as (segmenter, record):
            mask = await segmenter.segment(image)
            record.set({"omniserve.image.width": image.width, "omniserve.image.height": image.height})
            record.produced(images=1)
        return mask

    async def _repaint(self, model: str, image: Any, mask: Any, prompt: str, names: WireNames) -> Any:
        """The image repainted where ``mask`` is white, at the working size (not resized back)."""
        width, height = work_size(image.width, image.height, self.settings.inpaint_max_side)
        init, mask_png = await run_in(WorkPool.MEDIA, lambda: (_png(image.convert("RGB")), _png(mask)))
        job = ImageGeneration(
            prompt=prompt,
            width=width,
            height=height,
            steps=self.settings.inpaint_steps,
            guidance_scale=self.settings.inpaint_guidance_scale,
            seed=secrets.randbelow(2**32),
            init_image=init,
            mask_image=mask_png,
            strength=1.0,  # the masked area is drawn anew, not a variation of what was there
        )
        result = await self.images.generate(model, job, names)
        return result.images[0]


def _inverted(mask: Any) -> Any:
    from PIL import ImageOps

    return ImageOps.invert(mask)
