"""A multipart text field that is not text (bytes that are not UTF-8, or not in the charset its
part declares, or a charset no codec knows) is the client's mistake: every form route refuses it
with 400 INVALID_REQUEST_BODY in its family's envelope, never a 500. Real app, real HTTP bodies."""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient

from tests.fuzz.hostile import PNG_BYTES, WAV

BOUNDARY = "form-text-boundary"
# Each form route, with the file part it needs, so that only the text field is wrong.
FORM_ROUTES = [
    ("/v1/images/edits", ("image", "in.png", PNG_BYTES, "image/png")),
    ("/v1/audio/transcriptions", ("file", "in.wav", WAV, "audio/wav")),
    ("/v1/audio/translations", ("file", "in.wav", WAV, "audio/wav")),
    ("/v1/videos", ("input_reference", "in.png", PNG_BYTES, "image/png")),
]
NOT_TEXT = [
    ("invalid UTF-8", b"\xff\xfe\xfd", ""),
    ("truncated UTF-8", b"a cat \xc3", ""),
    ("UTF-8-encoded surrogate", b"\xed\xa0\x80", ""),
    ("not in its declared charset", b"\x00", "\r\nContent-Type: text/plain; charset=utf-16"),
    ("an unknown charset", b"a cat", "\r\nContent-Type: text/plain; charset=nonsense"),
]


def form(text: bytes, part_headers: str, file: tuple[str, str, bytes, str]) -> bytes:
    name, filename, content, media_type = file
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nfake\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="prompt"{part_headers}\r\n\r\n'.encode()
        + text
        + f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        f"Content-Type: {media_type}\r\n\r\n".encode()
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


@pytest.mark.parametrize("mount", ["/v1", "/openai/v1"])
@pytest.mark.parametrize(("path", "file"), FORM_ROUTES, ids=[path for path, _ in FORM_ROUTES])
@pytest.mark.parametrize(("text", "part_headers"), [(t, h) for _, t, h in NOT_TEXT], ids=[c for c, _, _ in NOT_TEXT])
async def test_a_text_field_that_is_not_text_is_refused(
    client: AsyncTestClient, mount: str, path: str, file: tuple[str, str, bytes, str], text: bytes, part_headers: str
) -> None:
    response = await client.post(
        path.replace("/v1", mount, 1),
        content=form(text, part_headers, file),
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("INVALID_REQUEST_BODY", "invalid_request_error")
    assert "form" in error["message"]
