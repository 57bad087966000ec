"""The API reference pages: every asset they load comes from this server, under the rules
that the OpenAPI document itself follows."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from litestar.testing import AsyncTestClient

from server.app import create_app
from tests.unit.conftest import make_state

_LINKS = re.compile(r"""(?:src|href)=['"]([^'"]+)['"]""")
_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


async def test_the_reference_page_loads_only_same_origin_assets(client: AsyncTestClient) -> None:
    for page_path in ("/schema", "/schema/swagger"):
        page = await client.get(page_path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        # The document is inlined in the page's script; the links are those of its head.
        head = page.text.partition("</head>")[0]
        links = _LINKS.findall(head)
        assert len(links) == 4, links  # icon, stylesheet, Swagger UI, its standalone preset
        for link in links:
            parts = urlsplit(link)
            assert not parts.scheme and not parts.netloc and link.startswith("/schema/assets/"), link
            asset = await client.get(link)
            assert asset.status_code == 200, link
            media_type = asset.headers["content-type"].partition(";")[0]
            assert media_type == _TYPES[Path(parts.path).suffix], (link, media_type)
            assert len(asset.content) > 500
        assert "SwaggerUIBundle(" in page.text and "validatorUrl: null" in page.text
    bundle = await client.get("/schema/assets/swagger-ui-bundle.js")
    assert b"SwaggerUIBundle" in bundle.content and "max-age" in bundle.headers["cache-control"]


async def test_only_the_pages_assets_are_served(client: AsyncTestClient) -> None:
    for name in ("swagger-editor-bundle.js", "LICENSE", "..%2F__init__.py", "index.css"):
        response = await client.get(f"/schema/assets/{name}")
        assert response.status_code == 404, name
        assert response.json()["reason"] == "API_NOT_FOUND"
    assert (await client.get("/schema/openapi.yaml")).status_code == 200


async def test_the_pages_follow_the_documents_rules(tmp_path: Path) -> None:
    # An open server answers only trusted Host names, the document as much as the pages.
    state = make_state(tmp_path)
    paths = ["/schema/openapi.json", "/schema", "/schema/assets/swagger-ui.css"]
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        for path in paths:
            assert (await client.get(path, headers={"Host": "127.0.0.1"})).status_code == 200, path
            refused = await client.get(path, headers={"Host": "rebound.example"})
            assert refused.status_code == 403 and refused.json()["reason"] == "ACCESS_DENY", path
