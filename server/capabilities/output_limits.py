"""How many pixels a request may produce: one check for every image, upscale and video route.

Each output image (or video frame) is resized, encoded and stored whole on the media pool, and
a request's outputs sit in memory together until they are stored. The sides each schema allows
are per API (Novassium documents 16,384 a side); these limits bound what any of them produces,
before the request is accepted.
"""

from __future__ import annotations

from schemas.errors import ErrorCode
from server.capabilities.calls import SAME_NAMES, WireNames
from server.settings import Limits


class OutputLimit:
    """``limits.max_output_pixels`` for each image or frame, ``limits.max_request_pixels`` for a request."""

    def __init__(self, max_output_pixels: int, max_request_pixels: int) -> None:
        if max_output_pixels < 1 or max_request_pixels < 1:
            raise ValueError("limits.max_output_pixels and limits.max_request_pixels must be at least 1")
        self.max_output_pixels = max_output_pixels
        self.max_request_pixels = max_request_pixels

    @classmethod
    def from_limits(cls, limits: Limits) -> OutputLimit:
        return cls(limits.max_output_pixels, limits.max_request_pixels)

    def check(
        self,
        width: int,
        height: int,
        count: int,
        names: WireNames = SAME_NAMES,
        *,
        size_field: str = "width",
        count_field: str = "image_num",
        unit: str = "image",
    ) -> None:
        """Refuse ``count`` outputs of ``width`` x ``height`` over a limit (400 naming the field
        that set the size, or the one that set the count)."""
        pixels = width * height
        if pixels > self.max_output_pixels:
            message = (
                f"A {width}x{height} {unit} is {pixels} pixels; this server produces at most "
                f"{self.max_output_pixels} pixels per {unit}."
            )
            raise names.invalid(size_field, message, ErrorCode.IMAGE_EXCEEDS_MAX_RESOLUTION)
        if pixels * count > self.max_request_pixels:
            message = (
                f"{count} {unit}s of {width}x{height} are {pixels * count} pixels; this server produces at most "
                f"{self.max_request_pixels} pixels per request."
            )
            raise names.invalid(count_field, message, ErrorCode.IMAGE_EXCEEDS_MAX_RESOLUTION)


DEFAULT_OUTPUT_LIMIT = OutputLimit.from_limits(Limits())
