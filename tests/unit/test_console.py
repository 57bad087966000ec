"""The browser console's files: served without a key, with their types and a policy that
allows only the page's own scripts; the page works under that policy; each card says its kind."""

from __future__ import annotations

import re
import tomllib
from collections.abc import AsyncIterator
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path
from typing import get_args

import pytest
from litestar.testing import AsyncTestClient

from engines.base import ModelKind
from schemas.openai.models import ModelKindName
from server.app import create_app
from server.console import pages
from tests.unit.conftest import make_state

CONSOLE_DIR = Path(pages.__file__).parent
REPO_ROOT = CONSOLE_DIR.parent.parent


class PageParts(HTMLParser):
    """What of the page a Content-Security-Policy decides: scripts, styles and handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.script_sources: list[str | None] = []
        self.stylesheets: list[str | None] = []
        self.inline: list[str] = []  # inline scripts, styles and event handlers
        self.ids: set[str] = set()
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        element_id = attributes.get("id")
        if element_id:
            self.ids.add(element_id)
        self.inline += [f"{tag} {name}" for name in attributes if name.startswith("on") or name == "style"]
        if tag == "script":
            self.script_sources.append(attributes.get("src"))
            self._in_script = True
        if tag == "style":
            self.inline.append("style element")
        if tag == "link" and attributes.get("rel") == "stylesheet":
            self.stylesheets.append(attributes.get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("script body")


def parsed_page(html: str) -> PageParts:
    parts = PageParts()
    parts.feed(html)
    return parts


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[AsyncTestClient]:
    state = make_state(tmp_path, auth={"static_keys": ["s3cret"]})
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        yield client


async def test_page_is_served_without_a_key_as_html_under_the_policy(keyed: AsyncTestClient) -> None:
    assert (await keyed.get("/v1/models")).status_code == 401
    response = await keyed.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    directives = dict(directive.strip().split(" ", 1) for directive in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    page = parsed_page(response.text)
    assert page.script_sources == ["/console/console.js"]
    assert page.stylesheets == ["/console/console.css"]


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/console/console.js", "text/javascript; charset=utf-8"), ("/console/console.css", "text/css; charset=utf-8")],
)
async def test_assets_are_served_with_their_types(keyed: AsyncTestClient, path: str, content_type: str) -> None:
    response = await keyed.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["content-security-policy"] == pages.CONTENT_SECURITY_POLICY
    assert response.content == (CONSOLE_DIR / path.rsplit("/", 1)[1]).read_bytes()


@pytest.mark.parametrize("path", ["/console/pages.py", "/console/__init__.py", "/console/..%2Fapp.py", "/console/"])
async def test_only_the_console_files_are_served(keyed: AsyncTestClient, path: str) -> None:
    response = await keyed.get(path)
    assert response.status_code == 404
    assert "import" not in response.text


async def test_an_open_server_serves_the_page_only_to_a_trusted_host(client: AsyncTestClient) -> None:
    assert (await client.get("/", headers={"Host": "localhost:8000"})).status_code == 200
    # A page that rebinds its own name to this server cannot load the console either.
    refused = await client.get("/", headers={"Host": "rebound.example"})
    assert refused.status_code == 403


async def test_the_console_is_not_an_api_operation(client: AsyncTestClient) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    assert "/" not in paths
    assert not [path for path in paths if path.startswith("/console")]


def test_page_holds_nothing_the_policy_would_block() -> None:
    page = parsed_page((CONSOLE_DIR / pages.INDEX).read_text())
    assert page.inline == []
    assert all(source and source.startswith("/console/") for source in page.script_sources + page.stylesheets)
    served = {f"/console/{name}" for name in pages.ASSET_TYPES}
    assert set(page.script_sources + page.stylesheets) == served


def test_every_element_the_script_uses_is_on_the_page() -> None:
    script = (CONSOLE_DIR / "console.js").read_text()
    used = set(re.findall(r"\$\(\"([\w-]+)\"\)", script)) | set(
        re.findall(r"^\s+\"([\w-]+)\": \"\w+\",$", script, re.M)
    )
    assert len(used) > 30
    assert used - parsed_page((CONSOLE_DIR / pages.INDEX).read_text()).ids == set()


def test_script_never_writes_html() -> None:
    script = (CONSOLE_DIR / "console.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", script)


def test_installed_package_ships_every_console_file() -> None:
    package_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data["server.console"]
    shipped = [path.name for path in CONSOLE_DIR.iterdir() if path.is_file() and path.suffix not in (".py", ".pyc")]
    assert {pages.INDEX, *pages.ASSET_TYPES} <= set(shipped)
    assert [name for name in shipped if not any(fnmatch(name, pattern) for pattern in patterns)] == []


async def test_model_cards_say_their_kind(client: AsyncTestClient) -> None:
    cards = (await client.get("/v1/models")).json()["data"]
    assert {card["id"]: card["kind"] for card in cards} == {
        "fake-chat": "chat",
        "fake-chat-alias": "chat",
        "fake-embed": "embedding",
        "fake-rerank": "rerank",
        "fake-sd": "image",
    }
    one = await client.get("/openai/v1/models/fake-chat-alias")
    assert one.json()["kind"] == "chat"


def test_card_kinds_are_the_catalog_kinds() -> None:
    assert set(get_args(ModelKindName)) == {kind.value for kind in ModelKind}
