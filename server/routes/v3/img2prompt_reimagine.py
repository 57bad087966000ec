"""/v3 synchronous image tools: img2prompt and reimagine, answered in the response body."""

from __future__ import annotations

from litestar import Controller, post

from schemas.v3.image_tools import ImageFileResponse
from schemas.v3.img2prompt import Img2PromptBody, Img2PromptResponse
from schemas.v3.reimagine import ReimagineBody
from server.accounts_hooks import Caller
from server.capabilities.calls import WireNames
from server.capabilities.img2prompt import ImagePrompts
from server.capabilities.reimagine import Reimaginer
from server.validation import NovitaBody, refuse_empty_body

# The body's image field; the configured model is named as "model".
V3_IMAGE_TOOL_NAMES = WireNames({"image": "image_file"})


class V3Img2PromptReimagineController(Controller):
    path = "/v3"
    tags = ["v3: image tools"]
    # Bodies are decoded as novita-client sends them: explicit nulls read as "not given".
    dto = NovitaBody
    return_dto = None
    guards = [refuse_empty_body]

    @post("/img2prompt", status_code=200, summary="Describe an image as a prompt", operation_id="img2prompt")
    async def img2prompt(self, data: Img2PromptBody, image_prompts: ImagePrompts) -> Img2PromptResponse:
        return Img2PromptResponse(prompt=await image_prompts.describe(data.image_file, V3_IMAGE_TOOL_NAMES))

    @post("/reimagine", status_code=200, summary="Draw a variation of an image", operation_id="reimagine")
    async def reimagine(self, data: ReimagineBody, reimaginer: Reimaginer, caller: Caller) -> ImageFileResponse:
        image_type = data.extra.response_image_type
        image = await reimaginer.reimagine(data.image_file, image_type, V3_IMAGE_TOOL_NAMES, caller.meter)
        return ImageFileResponse(image_file=image, image_type=image_type)
