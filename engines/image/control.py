"""ControlNet conditioning images: the preprocessors that need no model of their own.

A1111's preprocessors ("modules") turn a reference picture into what a ControlNet was trained on:
edges for a canny ControlNet, depth maps, poses. The ones here are plain image arithmetic; those
that run a model (depth, openpose, segmentation, ...) are not offered, and a request naming one is
refused rather than given an unprocessed image.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

from engines.base import ControlUnit
from engines.errors import InvalidJob

# A1111's canny defaults, on the 0..255 scale of the 3x3 Sobel gradient magnitude.
CANNY_LOW, CANNY_HIGH = 100, 200
_CANNY_SIGMA = 1.4  # the Gaussian smoothing before the gradient, as in the classic recipe


def _canny(gray: np.ndarray) -> np.ndarray:
    """Edges as 0/255: gradient, non-maximum suppression along it, hysteresis between the thresholds."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(gray, _CANNY_SIGMA)
    gx, gy = ndimage.sobel(smooth, axis=1), ndimage.sobel(smooth, axis=0)
    magnitude = np.hypot(gx, gy)
    # The gradient direction in four sectors (0, 45, 90, 135 degrees); a pixel stays an edge only
    # where it is at least as strong as both neighbours across the edge.
    sector = (np.round(np.arctan2(gy, gx) / (np.pi / 4)) % 4).astype(np.int8)
    padded = np.pad(magnitude, 1)
    height, width = magnitude.shape

    def shifted(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    keep = np.zeros_like(magnitude, dtype=bool)
    for index, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        peak = (magnitude >= shifted(dy, dx)) & (magnitude >= shifted(-dy, -dx))
        keep |= (sector == index) & peak
    thin = np.where(keep, magnitude, 0.0)
    weak = thin >= CANNY_LOW
    # Hysteresis: a weak edge survives when its 8-connected run of weak edges holds a strong one.
    labels, count = ndimage.label(weak, structure=np.ones((3, 3)))
    strong_labels = np.unique(labels[thin >= CANNY_HIGH])
    edges = np.isin(labels, strong_labels[strong_labels > 0]) if count else weak
    return np.where(edges, 255, 0).astype(np.uint8)


def _gray(image: Any) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float64)


def _to_rgb(values: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(values.astype(np.uint8)).convert("RGB")


PREPROCESSORS: dict[str, Callable[[Any], Any]] = {
    "none": lambda image: image,
    "canny": lambda image: _to_rgb(_canny(_gray(image))),
    # White lines on black from black lines on white (A1111's "invert", for line art and scribbles).
    "invert": lambda image: _to_rgb(255 - np.asarray(image, dtype=np.int16)),
    # A1111's "threshold" at its default of 127.
    "threshold": lambda image: _to_rgb(np.where(_gray(image) > 127, 255, 0)),
}


def control_image(data: bytes, size: tuple[int, int], preprocessor: str) -> Any:
    """The encoded `data` resized to `size` (RGB) and run through `preprocessor` (a PREPROCESSORS key).

    Raises KeyError for an unknown preprocessor and OSError/ValueError for unreadable data.
    """
    from PIL import Image

    process = PREPROCESSORS[preprocessor]
    with Image.open(io.BytesIO(data)) as image:
        resized = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    return process(resized)


def control_arguments(units: list[ControlUnit], size: tuple[int, int]) -> dict[str, Any]:
    """The ControlNet arguments of a diffusers ControlNet img2img call for `units`, images preprocessed."""
    from PIL import Image

    images = []
    for unit in units:
        try:
            images.append(control_image(unit.image, size, unit.preprocessor))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
            message = "a controlnet image is not a readable PNG, JPEG or WebP image"
            raise InvalidJob(message, "controlnets") from exc
    single = len(units) == 1  # one ControlNetModel takes plain values, a MultiControlNetModel lists
    scales = [float(unit.strength) for unit in units]
    return {
        "control_image": images[0] if single else images,
        "controlnet_conditioning_scale": scales[0] if single else scales,
        "control_guidance_start": [unit.guidance_start for unit in units],
        "control_guidance_end": [unit.guidance_end for unit in units],
    }
