"""Novassium: ``POST /api/novassium/v1/generate`` with the key in ``X-API-Key``."""

from __future__ import annotations

from litestar import Controller, Request, post

from schemas.vendor.novassium import GenerateRequest, GenerateResponse
from server.auth import presented_key
from server.serving.vendor.common import decode_loose
from server.state import AppState


class NovassiumController(Controller):
    path = "/api/novassium/v1"
    tags = ["vendor: Novassium"]

    @post("/generate", status_code=200, summary="Generate images (synchronous)")
    async def generate(self, request: Request, app_state: AppState) -> GenerateResponse:
        # The key is checked before the body, so a client without one learns that first.
        key_id = app_state.authenticator.authenticate(presented_key(request))
        app_state.accounts.admit(key_id)
        body = decode_loose(await request.body(), GenerateRequest)
        return await app_state.novassium.generate(body, key_id, str(request.base_url))
