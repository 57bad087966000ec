"""Serves the console's files from memory, each with a policy that lets the page load only
itself: no inline script, no other origin, no framing."""

from __future__ import annotations

from importlib import resources

from litestar import Controller, Response, get

from schemas.errors import ApiError, ErrorCode

# The page's own scripts and styles only. Pictures come back as data: URLs (b64_json) or from
# this server's signed file URLs; speech plays from a blob: URL; every call goes to this origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Revalidated on each load, so a restarted server's new page is the one shown.
    "Cache-Control": "no-cache",
}
INDEX = "index.html"
# The assets by the name the page asks for, with their types (Litestar adds the charset,
# utf-8, to text types); nothing else is served.
ASSET_TYPES = {
    "console.js": "text/javascript",
    "console.css": "text/css",
}


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


# Read once, at import: a few kilobytes, and no file access on the event loop afterwards.
_FILES = {name: _read(name) for name in (INDEX, *ASSET_TYPES)}


def _page(name: str, media_type: str) -> Response[bytes]:
    return Response(_FILES[name], media_type=media_type, headers=SECURITY_HEADERS)


class ConsoleController(Controller):
    path = ""

    # Pages, not API operations: left out of the OpenAPI document.
    @get("/", summary="The browser console", include_in_schema=False)
    async def index(self) -> Response[bytes]:
        return _page(INDEX, "text/html")

    @get("/console/{name:str}", summary="The browser console's scripts and styles", include_in_schema=False)
    async def asset(self, name: str) -> Response[bytes]:
        media_type = ASSET_TYPES.get(name)
        if media_type is None:
            raise ApiError(ErrorCode.API_NOT_FOUND, "No such console file.")
        return _page(name, media_type)
