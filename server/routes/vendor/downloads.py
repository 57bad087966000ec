"""Input images that a client names by URL: downloaded through ``server/outbound.py`` (the
address vetted once and pinned, one total deadline, a byte limit), never from the server's
own network unless settings allow private URLs."""

from __future__ import annotations

from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode
from server.capabilities.images.inputs import MAX_INPUT_IMAGE_BYTES, base64_image_bytes, decode_input_image
from server.outbound import OutboundHttp


async def fetch_image(outbound: OutboundHttp, source: str, *, param: str, timeout_s: float) -> bytes:
    """The image bytes behind ``source``: an http(s) URL, or base64 / a data URL. Checked
    to be a readable image within the input limits."""
    if not source.startswith(("http://", "https://")):
        data = base64_image_bytes(source, param)
    else:

        def too_large(limit: int) -> ApiError:
            return ApiError(
                ErrorCode.IMAGE_FILE_EXCEEDS_MAX_SIZE, f"{param} is larger than {limit} bytes.", param=param
            )

        data = await outbound.download(
            source, param=param, timeout_s=timeout_s, max_bytes=MAX_INPUT_IMAGE_BYTES, too_large=too_large
        )
    return await run_in(WorkPool.MEDIA, decode_input_image, data, param)
