"""Novassium: ``POST /api/novassium/v1/generate`` with the key in ``X-API-Key``."""

from __future__ import annotations

from litestar import Controller, Request, post
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from schemas.vendor.novassium import GenerateRequest, GenerateResponse
from server.accounts import Accounts
from server.accounts_hooks import Caller
from server.auth import Authenticator, presented_key
from server.hosts import output_base_url
from server.routes.vendor.novassium_images import NovassiumImages
from server.validation import LooseBody

# What an empty body reads as: Litestar passes no `data` for one.
_NOTHING_SENT = GenerateRequest()


def novassium_key_guard(authenticator: Authenticator, accounts: Accounts) -> Guard:
    async def novassium_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        """The key is checked before the body is read, so a client without one learns that first."""
        key_id = await authenticator.checked_id(presented_key(connection))
        account = accounts.admit(key_id, "novassium")
        connection.scope["state"]["api_key_id"] = key_id
        if key_id is not None:
            connection.scope["state"]["api_account"] = account

    return novassium_key


class NovassiumController(Controller):
    path = "/api/novassium/v1"
    tags = ["vendor: Novassium"]
    dto = LooseBody
    return_dto = None

    @post("/generate", status_code=200, summary="Generate images (synchronous)", operation_id="novassiumGenerate")
    async def generate(
        self, request: Request, novassium: NovassiumImages, caller: Caller, data: GenerateRequest = _NOTHING_SENT
    ) -> GenerateResponse:
        return await novassium.generate(data, caller.meter, output_base_url(request))
