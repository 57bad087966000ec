"""The API reference pages under /schema, with every asset served by this process: a server
on a network without internet access still shows them, and a page load tells no CDN who reads
the reference.

/schema (and /schema/swagger) is Swagger UI, whose files come from the installed
``swagger-ui-py`` package (a Swagger UI 5 dist, which reads OpenAPI 3.1); /schema/openapi.json
and /schema/openapi.yaml are the document itself. Litestar's other pages (ReDoc, RapiDoc,
Stoplight Elements) load their scripts from CDNs and are not served. The pages and assets
take the same rules as the document: no key, and on an open server a trusted Host.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from litestar import Request, Response, Router, get
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin, YamlRenderPlugin

from schemas.errors import ApiError, ErrorCode

SCHEMA_PATH = "/schema"
ASSETS_PATH = f"{SCHEMA_PATH}/assets"

# The files the page loads, and their content types; nothing else in the dist is served.
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
# The dist does not ship the source maps its files name; browsers' tools would ask for them.
_SOURCE_MAP = re.compile(rb"\n?(/\*# sourceMappingURL=[^*]*\*/|//# sourceMappingURL=\S*)\s*$")
_CACHE = {"Cache-Control": "public, max-age=86400"}


def _dist_dir() -> Path:
    # Found without importing it: the package's own module pulls in Jinja and its handlers.
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed; it ships the API reference page")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def read_assets() -> dict[str, bytes]:
    """The assets' bytes, read once when the app is built (a few MB)."""
    dist = _dist_dir()
    return {name: _SOURCE_MAP.sub(b"", (dist / name).read_bytes()) for name in _ASSETS}


class LocalSwaggerRenderPlugin(SwaggerRenderPlugin):
    """Swagger UI with its scripts, stylesheet and icon served from ``ASSETS_PATH``."""

    def __init__(self, assets: dict[str, bytes]) -> None:
        super().__init__(
            js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            css_url=f"{ASSETS_PATH}/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
            path=["/", "/swagger"],
        )
        self.assets = assets

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        page = super().render(request, openapi_schema)
        # Swagger UI would send the document to its public validator for a badge: never.
        return page.replace(b"dom_id: '#swagger-container',", b"dom_id: '#swagger-container', validatorUrl: null,", 1)

    def receive_router(self, router: Router) -> None:
        super().receive_router(router)
        assets = self.assets

        @get(
            f"{ASSETS_PATH.removeprefix(SCHEMA_PATH)}/{{name:str}}",
            sync_to_thread=False,
            include_in_schema=False,
        )
        def asset(name: str) -> Response[bytes]:
            if name not in assets:
                raise ApiError(ErrorCode.API_NOT_FOUND, "No such API route.")
            return Response(assets[name], media_type=_ASSETS[name], headers=_CACHE)

        router.register(asset)


def openapi_config(title: str, version: str) -> OpenAPIConfig:
    return OpenAPIConfig(
        title=title,
        version=version,
        path=SCHEMA_PATH,
        render_plugins=[LocalSwaggerRenderPlugin(read_assets()), JsonRenderPlugin(), YamlRenderPlugin()],
    )
