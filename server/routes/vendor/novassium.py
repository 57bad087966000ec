"""Novassium: ``POST /api/novassium/v1/generate`` with the key in ``X-API-Key``."""

from __future__ import annotations

from litestar import Controller, Request, post
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from schemas.vendor.novassium import GenerateRequest, GenerateResponse
from server.auth import presented_key
from server.state import AppState
from server.validation import LooseBody

# What an empty body reads as: Litestar passes no `data` for one.
_NOTHING_SENT = GenerateRequest()


async def _novassium_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """The key is checked before the body is read, so a client without one learns that first."""
    app_state: AppState = connection.app.state.omniserve
    key_id = app_state.authenticator.authenticate(presented_key(connection))
    app_state.accounts.admit(key_id)
    connection.scope["state"]["api_key_id"] = key_id


class NovassiumController(Controller):
    path = "/api/novassium/v1"
    tags = ["vendor: Novassium"]
    guards = [_novassium_key]
    dto = LooseBody
    return_dto = None

    @post("/generate", status_code=200, summary="Generate images (synchronous)")
    async def generate(
        self, request: Request, app_state: AppState, data: GenerateRequest = _NOTHING_SENT
    ) -> GenerateResponse:
        key_id: str | None = request.scope["state"]["api_key_id"]
        return await app_state.novassium.generate(data, key_id, str(request.base_url))
