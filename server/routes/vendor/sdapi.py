"""The Stable Diffusion API under ``/api/v3``: the key travels in the JSON body."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post

from schemas.vendor.sdapi import FetchRequest, SdRequest
from server.state import AppState
from server.tasks.models import TaskType
from server.validation import LooseBody

# What an empty body reads as: Litestar passes no `data` for one.
_NOTHING_SENT = SdRequest()
_NO_KEY_SENT = FetchRequest()


async def _generate(request: Request, app_state: AppState, task_type: TaskType, body: SdRequest) -> dict[str, Any]:
    key_id = app_state.authenticator.authenticate(body.key)
    # The duplicate filter compares the bodies as sent (Litestar keeps the bytes it decoded).
    app_state.sdapi.check_duplicate(key_id, await request.body())
    app_state.accounts.admit(key_id)
    return await app_state.sdapi.submit(task_type, body, key_id, str(request.base_url))


class SdApiController(Controller):
    path = "/api/v3"
    tags = ["vendor: Stable Diffusion API"]
    # Numbers may arrive as strings; an empty body is the handler's default.
    dto = LooseBody
    return_dto = None

    @post("/text2img", status_code=200, summary="Text to image")
    async def text2img(self, request: Request, app_state: AppState, data: SdRequest = _NOTHING_SENT) -> dict[str, Any]:
        return await _generate(request, app_state, TaskType.TXT_TO_IMG, data)

    @post("/img2img", status_code=200, summary="Image to image (init_image is a URL)")
    async def img2img(self, request: Request, app_state: AppState, data: SdRequest = _NOTHING_SENT) -> dict[str, Any]:
        return await _generate(request, app_state, TaskType.IMG_TO_IMG, data)

    @post("/inpaint", status_code=200, summary="Inpainting (init_image and mask_image are URLs)")
    async def inpaint(self, request: Request, app_state: AppState, data: SdRequest = _NOTHING_SENT) -> dict[str, Any]:
        return await _generate(request, app_state, TaskType.INPAINTING, data)

    @post("/fetch/{request_id:str}", status_code=200, summary="The result of a queued request")
    async def fetch(
        self, request_id: str, app_state: AppState, request: Request, data: FetchRequest = _NO_KEY_SENT
    ) -> dict[str, Any]:
        key_id = app_state.authenticator.authenticate(data.key)
        # Polling is not new work: it checks the subscription but uses no request window.
        app_state.accounts.admit(key_id, count=False)
        return await app_state.sdapi.fetch(request_id, key_id, str(request.base_url))
