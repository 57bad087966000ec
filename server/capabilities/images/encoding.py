"""Image outputs: encoding to the requested format, and storing answers of synchronous routes."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from engines.workpools import WorkPool, run_in
from server.storage.local import LocalStorage
from server.tasks.models import OutputFile

PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def encode_image(image: Any, image_type: str) -> bytes:
    """A PIL image as PNG, JPEG or WebP bytes. Blocking: run in a thread."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=PIL_FORMATS[image_type])
    return buffer.getvalue()


async def store_images(
    storage: LocalStorage,
    images: list[Any],
    extension: str,
    base_url: str,
    ttl_s: int,
    encode: Callable[[Any], bytes],
) -> list[str]:
    """Encode and store each image of one synchronous answer under a fresh folder; their
    signed URLs. One image at a time: a large one is most of a gigabyte while encoded."""
    folder = uuid.uuid4().hex  # a fresh folder per request, a valid key segment
    urls = []
    for index, image in enumerate(images):
        data = await run_in(WorkPool.MEDIA, encode, image)
        key = f"{folder}/{index}.{extension}"
        await run_in(WorkPool.STORAGE, storage.put, key, data)
        urls.append(base_url.rstrip("/") + storage.signed_path(key, ttl_s))
    return urls


class ImageOutputs(msgspec.Struct, kw_only=True, frozen=True):
    """How a task's images are delivered: their format, and whether (and at which Novita
    level) each is scored for NSFW content."""

    image_type: str = "png"
    nsfw_detection: bool = False
    nsfw_level: int = 0


async def store_task_images(
    storage: LocalStorage,
    task_id: str,
    images: list[Any],
    image_type: str,
    nsfw: list[dict[str, object] | None],
) -> list[OutputFile]:
    """Each image of a task stored as ``<task_id>/<index>.<image_type>`` with its NSFW result."""
    outputs = []
    for index, (image, detection) in enumerate(zip(images, nsfw, strict=True)):
        data = await run_in(WorkPool.MEDIA, encode_image, image, image_type)
        key = f"{task_id}/{index}.{image_type}"
        await run_in(WorkPool.STORAGE, storage.put, key, data)
        outputs.append(OutputFile(kind="image", key=key, media_type=image_type, nsfw=detection))
    return outputs
