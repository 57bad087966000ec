"""Input images that a client names by URL: downloaded with a size limit, never from the
server's own network unless settings allow private URLs (``server/netguard.py``)."""

from __future__ import annotations

import httpx

from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode
from server.capabilities.images.inputs import MAX_INPUT_IMAGE_BYTES, base64_image_bytes, decode_input_image
from server.netguard import check_public_url_async


def _too_large(param: str) -> ApiError:
    return ApiError(
        ErrorCode.IMAGE_FILE_EXCEEDS_MAX_SIZE,
        f"{param} is larger than {MAX_INPUT_IMAGE_BYTES} bytes.",
        param=param,
    )


async def fetch_image(
    http: httpx.AsyncClient, source: str, *, param: str, allow_private: bool, timeout_s: float
) -> bytes:
    """The image bytes behind ``source``: an http(s) URL, or base64 / a data URL. Checked
    to be a readable image within the input limits."""
    if not source.startswith(("http://", "https://")):
        data = base64_image_bytes(source, param)
    else:
        data = await _download(http, source, param=param, allow_private=allow_private, timeout_s=timeout_s)
    return await run_in(WorkPool.MEDIA, decode_input_image, data, param)


async def _download(http: httpx.AsyncClient, url: str, *, param: str, allow_private: bool, timeout_s: float) -> bytes:
    await check_public_url_async(url, allow_private=allow_private, param=param)
    chunks: list[bytes] = []
    size = 0
    try:
        # Redirects are not followed (the client is built that way): a redirect could lead
        # past the address check above.
        async with http.stream("GET", url, timeout=timeout_s) as response:
            if response.status_code != 200:
                raise ApiError(
                    ErrorCode.INVALID_REQUEST_BODY,
                    f"{param} could not be downloaded: HTTP {response.status_code}.",
                    param=param,
                )
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > MAX_INPUT_IMAGE_BYTES:
                raise _too_large(param)
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_INPUT_IMAGE_BYTES:
                    raise _too_large(param)
                chunks.append(chunk)
    except httpx.HTTPError:
        raise ApiError(ErrorCode.INVALID_REQUEST_BODY, f"{param} could not be downloaded.", param=param) from None
    return b"".join(chunks)
