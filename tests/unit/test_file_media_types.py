"""The routes that answer files document every media type they send (Litestar documents a
``File`` answer under one media type, empty unless the route sets one)."""

from __future__ import annotations

from litestar.testing import AsyncTestClient

from server.routes.openai import videos
from server.routes.v3 import files


async def _documented(client: AsyncTestClient, path: str) -> set[str]:
    document = (await client.get("/schema/openapi.json")).json()
    return set(document["paths"][path]["get"]["responses"]["200"]["content"])


async def test_video_content_documents_each_video_type(client: AsyncTestClient) -> None:
    sent = {*videos._MEDIA_TYPES.values(), videos._OTHER_MEDIA_TYPE}
    assert {"video/mp4", "video/webm", "image/gif"} <= sent
    for mount in ("/v1", "/openai/v1"):
        assert await _documented(client, f"{mount}/videos/{{video_id}}/content") == sent


async def test_task_outputs_document_each_output_type(client: AsyncTestClient) -> None:
    sent = {*files._CONTENT_TYPES.values(), files._OTHER_CONTENT_TYPE}
    assert await _documented(client, "/v3/files/{task_id}/{name}") == sent
