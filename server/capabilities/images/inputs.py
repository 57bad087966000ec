"""Images that clients upload (init images, masks): limits, decode checks, mask conventions.

Every route that accepts an image checks it here, so the limits and the error codes are the
same whether the image arrives as a multipart file (OpenAI /images/edits) or as base64 (/v3).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from schemas.errors import ApiError, ErrorCode

# One uploaded image, as encoded bytes. An edit carries an image and a mask, so its route
# accepts a body of twice this plus room for the form fields.
MAX_INPUT_IMAGE_BYTES = 8 * 1024 * 1024
# Inputs are resized to the output size (at most 2048 a side) before inference; this
# bounds the memory a decode may take (16.7 MP is 50 MB as RGB), not the output.
MAX_INPUT_PIXELS = 4096 * 4096
INPUT_FORMATS = ("PNG", "JPEG", "WEBP")


def open_input_image(
    data: bytes, param: str, *, max_bytes: int = MAX_INPUT_IMAGE_BYTES, max_pixels: int = MAX_INPUT_PIXELS
) -> Any:
    """The decoded image (PIL), or a 400 naming ``param``. Blocking: run it in a thread.

    The size checks come before any pixel is decoded: PIL reads the dimensions from the
    header, so a decompression bomb is refused without allocating its pixels. A route with
    limits of its own (the /v3 image tools) passes them.
    """
    from PIL import Image

    if len(data) > max_bytes:
        raise ApiError(
            ErrorCode.IMAGE_FILE_EXCEEDS_MAX_SIZE,
            f"{param} is {len(data)} bytes; at most {max_bytes} are accepted.",
            param=param,
        )
    try:
        image = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except Image.DecompressionBombError:
        raise _too_many_pixels(param, max_pixels) from None
    except (OSError, ValueError):  # UnidentifiedImageError is an OSError
        raise ApiError(
            ErrorCode.INVALID_IMAGE_FORMAT, f"{param} is not a readable PNG, JPEG or WebP image.", param=param
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels(param, max_pixels, width, height)
    try:
        image.load()  # a truncated or corrupt body passes open() and fails only here
    except (OSError, ValueError, Image.DecompressionBombError):
        raise ApiError(
            ErrorCode.INVALID_IMAGE_FORMAT, f"{param} is a damaged or truncated image.", param=param
        ) from None
    return image


def _too_many_pixels(param: str, max_pixels: int, width: int = 0, height: int = 0) -> ApiError:
    size = f" is {width}x{height}, which" if width else ""
    return ApiError(
        ErrorCode.IMAGE_EXCEEDS_MAX_RESOLUTION,
        f"{param}{size} exceeds the limit of {max_pixels} pixels.",
        param=param,
    )


def base64_image_bytes(value: str, param: str) -> bytes:
    """The bytes of a base64 image field (a data: URL too); a 400 naming ``param`` if not base64."""
    if "," in value[:100] and value.startswith("data:"):
        value = value.split(",", 1)[1]  # data URLs are common in browser clients
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(ErrorCode.INVALID_IMAGE_FORMAT, "The image is not valid base64.", param=param) from None


def decode_input_image(data: bytes, param: str) -> bytes:
    """Check that ``data`` is an image within the limits; the same bytes back (the engine
    decodes them again, resized to the job's size)."""
    open_input_image(data, param)
    return data


def has_alpha(image: Any) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def inpaint_mask(image: Any) -> bytes:
    """The mask in the engines' convention (white repaints, black keeps) as PNG bytes.

    OpenAI's convention differs: the mask is a PNG whose fully transparent pixels mark
    what to edit. A mask with an alpha channel is read that way; one without (grayscale
    or RGB) is taken to follow the engines' convention already, as A1111 masks do.
    """
    if has_alpha(image):
        alpha = image.convert("RGBA").getchannel("A")
        mask = alpha.point(lambda value: 255 if value == 0 else 0)
    else:
        mask = image.convert("L")
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()
