"""The Stable Diffusion API under ``/api/v3``: the key travels in the JSON body."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post

from schemas.vendor.sdapi import FetchRequest, SdRequest
from server.accounts import Accounts
from server.auth import Authenticator
from server.hosts import output_base_url
from server.routes.vendor.sdapi_tasks import SdApiTasks
from server.tasks.models import TaskType
from server.validation import LooseBody

# What an empty body reads as: Litestar passes no `data` for one.
_NOTHING_SENT = SdRequest()
_NO_KEY_SENT = FetchRequest()


class SdApiController(Controller):
    path = "/api/v3"
    tags = ["vendor: Stable Diffusion API"]
    # Numbers may arrive as strings; an empty body is the handler's default.
    dto = LooseBody
    return_dto = None

    @staticmethod
    async def _generate(
        request: Request,
        task_type: TaskType,
        body: SdRequest,
        sdapi: SdApiTasks,
        authenticator: Authenticator,
        accounts: Accounts,
    ) -> dict[str, Any]:
        key_id = await authenticator.checked_id(body.key)
        # The duplicate filter compares the bodies as sent (Litestar keeps the bytes it decoded).
        sdapi.check_duplicate(key_id, await request.body())
        accounts.admit(key_id, "sdapi")
        return await sdapi.submit(task_type, body, key_id, output_base_url(request))

    @post("/text2img", status_code=200, summary="Text to image", operation_id="sdapiText2img")
    async def text2img(
        self,
        request: Request,
        sdapi: SdApiTasks,
        authenticator: Authenticator,
        accounts: Accounts,
        data: SdRequest = _NOTHING_SENT,
    ) -> dict[str, Any]:
        return await self._generate(request, TaskType.TXT_TO_IMG, data, sdapi, authenticator, accounts)

    @post("/img2img", status_code=200, summary="Image to image (init_image is a URL)", operation_id="sdapiImg2img")
    async def img2img(
        self,
        request: Request,
        sdapi: SdApiTasks,
        authenticator: Authenticator,
        accounts: Accounts,
        data: SdRequest = _NOTHING_SENT,
    ) -> dict[str, Any]:
        return await self._generate(request, TaskType.IMG_TO_IMG, data, sdapi, authenticator, accounts)

    @post(
        "/inpaint",
        status_code=200,
        summary="Inpainting (init_image and mask_image are URLs)",
        operation_id="sdapiInpaint",
    )
    async def inpaint(
        self,
        request: Request,
        sdapi: SdApiTasks,
        authenticator: Authenticator,
        accounts: Accounts,
        data: SdRequest = _NOTHING_SENT,
    ) -> dict[str, Any]:
        return await self._generate(request, TaskType.INPAINTING, data, sdapi, authenticator, accounts)

    @post(
        "/fetch/{request_id:str}",
        status_code=200,
        summary="The result of a queued request",
        operation_id="sdapiFetch",
    )
    async def fetch(
        self,
        request_id: str,
        request: Request,
        sdapi: SdApiTasks,
        authenticator: Authenticator,
        accounts: Accounts,
        data: FetchRequest = _NO_KEY_SENT,
    ) -> dict[str, Any]:
        key_id = await authenticator.checked_id(data.key)
        # Polling is not new work: it checks the subscription but uses no request window.
        accounts.admit(key_id, "sdapi", count=False)
        return await sdapi.fetch(request_id, key_id, output_base_url(request))
