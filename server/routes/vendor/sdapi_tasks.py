"""The Stable Diffusion API's text2img, img2img, inpaint and fetch over the /v3 image tasks.

A request becomes a Novita task body (input images downloaded and embedded), so it is
validated, queued, run, stored, charged and survives restarts exactly as a /v3 task does.
The request waits up to ``vendor.sdapi_wait_s`` for its images; a slower job answers
``"status": "processing"`` with a ``fetch_result`` URL, which answers with the same body
as a fast job once the task is done. The vendor's own fields travel in the stored body
under ``sdapi``, so fetch and the webhook can render the vendor's shape from the task alone.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import time
from typing import Any

import msgspec

from engines.scheduler import Scheduler
from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode
from schemas.limits import SIDE_MULTIPLE
from schemas.vendor.sdapi import SdRequest, is_yes
from server.netguard import check_public_url_async
from server.outbound import OutboundHttp
from server.recent_requests import MemoryRecent, RecentRequests
from server.routes.v3.image_tasks import BODY_TYPES, V3ImageTasks
from server.routes.vendor.downloads import fetch_image
from server.settings import VendorSettings
from server.storage.local import LocalStorage
from server.tasks.models import Task, TaskStatus, TaskType
from server.tasks.runner import TaskRunner
from server.tasks.store import TaskStore
from server.validation import decode_task_body

SPAM_WINDOW_S = 30.0
SPAM_TIPS = (
    "you are sending the same request multiple times, spam filter is enabled, please wait for 30 seconds and try again"
)
# "upscale": "yes" doubles the size with a hires-fix pass (image-space Lanczos, then img2img).
UPSCALE_STRENGTH = 0.35
# An NSFW score (0..100) at or above this replaces the image with a blank one.
NSFW_THRESHOLD = 50.0
_POLL_S = 0.05
# Novita's field names, as this API's clients know them.
_PARAMS = {
    "image_num": "samples",
    "steps": "num_inference_steps",
    "image_base64": "init_image",
    "mask_image_base64": "mask_image",
    "hires_fix.strength": "upscale",
    "model_name": "model_id",
    "extra.webhook.url": "webhook",
}


def _field(message: str, param: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_REQUEST_BODY, message, param=param)


def _side(value: int) -> int:
    return value // SIDE_MULTIPLE * SIDE_MULTIPLE  # the pipelines draw in multiples of 8


class SdApiTasks:
    def __init__(
        self,
        scheduler: Scheduler,
        v3_images: V3ImageTasks,
        store: TaskStore,
        runner: TaskRunner,
        storage: LocalStorage,
        outbound: OutboundHttp,
        settings: VendorSettings,
        *,
        model: str | None,
        clock: Any = time.monotonic,
        recent: RecentRequests | None = None,
    ) -> None:
        self.scheduler = scheduler
        # The Stable Diffusion API is an adapter over the /v3 one: a request becomes a /v3 body.
        self.v3_images = v3_images
        self.store = store
        self.runner = runner
        self.storage = storage
        self.outbound = outbound
        self.settings = settings
        self.model = model
        # Deadlines, and the in-memory duplicate filter's clock; replaceable after construction.
        self.clock = clock
        # Digests of recent request bodies, for the duplicate-request filter: in this process,
        # or shared by the replicas (server/recent_requests.py).
        self.recent = recent if recent is not None else MemoryRecent(lambda: self.clock())

    def check_duplicate(self, key_id: str | None, raw: bytes) -> None:
        """The vendor's spam filter: the same body from the same key within 30 s is refused."""
        digest = hashlib.sha256((key_id or "").encode() + b"\0" + raw).digest()
        wait = self.recent.first_seen(digest, SPAM_WINDOW_S)
        if wait is not None:
            raise ApiError(ErrorCode.RATE_LIMIT_EXCEEDED, SPAM_TIPS, retry_after=wait)

    def _model(self, model_id: str | None) -> str:
        if model_id is None:
            if self.model is None:
                raise ApiError(ErrorCode.MODEL_NOT_FOUND, "Model id not found")
            return self.model
        engine = self.scheduler.registry.get(model_id)
        if engine is None:
            raise ApiError(ErrorCode.MODEL_NOT_FOUND, "Model id not found")
        return engine.spec.name

    async def _novita_body(self, task_type: TaskType, body: SdRequest) -> dict[str, Any]:
        """The /v3 body of ``body`` (whose schema has checked the API's ranges)."""
        if body.prompt is None or not body.prompt.strip():
            raise _field("The prompt field is required.", "prompt")
        width, height = _side(body.width), _side(body.height)
        safety = is_yes(body.safety_checker)
        if safety and not self.v3_images.images.nsfw.configured:
            raise _field("The safety checker is not available on this server.", "safety_checker")
        if body.webhook is not None:
            await check_public_url_async(
                body.webhook,
                allow_private=self.outbound.allow_private,
                param="webhook",
                timeout_s=self.settings.sdapi_fetch_timeout_s,
            )
        request: dict[str, Any] = {
            "model_name": self._model(body.model_id),
            "prompt": body.prompt,
            "negative_prompt": body.negative_prompt or "",
            "image_num": body.samples,
            "steps": body.num_inference_steps,
            "guidance_scale": body.guidance_scale,
            "seed": -1 if body.seed is None else body.seed,
            "width": width,
            "height": height,
        }
        upscale = is_yes(body.upscale) and task_type is TaskType.TXT_TO_IMG
        if upscale:
            request["hires_fix"] = {
                "target_width": width * 2,
                "target_height": height * 2,
                "strength": UPSCALE_STRENGTH,
                "upscaler": "RealESRNet_x4plus",
            }
        if task_type is not TaskType.TXT_TO_IMG:
            await self._add_images(task_type, body, request)
        extra: dict[str, Any] = {"response_image_type": "png", "enable_nsfw_detection": safety}
        if body.webhook is not None:
            extra["webhook"] = {"url": body.webhook}
        vendor = {"track_id": body.track_id, "safety_checker": safety, "upscale": upscale}
        return {"request": request, "extra": extra, "sdapi": vendor}

    async def _add_images(self, task_type: TaskType, body: SdRequest, request: dict[str, Any]) -> None:
        request["strength"] = 0.7 if body.strength is None else body.strength
        sources = {"init_image": body.init_image}
        if task_type is TaskType.INPAINTING:
            sources["mask_image"] = body.mask_image
            del request["width"], request["height"]  # inpainting keeps the input's size
        for name, source in sources.items():
            if not source:
                raise _field(f"The {name.replace('_', ' ')} field is required.", name)
        images = await asyncio.gather(
            *(
                fetch_image(self.outbound, source or "", param=name, timeout_s=self.settings.sdapi_fetch_timeout_s)
                for name, source in sources.items()
            )
        )
        encoded = [base64.b64encode(image).decode("ascii") for image in images]
        request["image_base64"] = encoded[0]
        if task_type is TaskType.INPAINTING:
            request["mask_image_base64"] = encoded[1]

    async def submit(self, task_type: TaskType, body: SdRequest, key_id: str | None, base_url: str) -> dict[str, Any]:
        novita = await self._novita_body(task_type, body)
        raw = msgspec.json.encode(novita)
        try:
            task_id = await self.v3_images.submit(task_type, raw, decode_task_body(raw, BODY_TYPES[task_type]), key_id)
        except ApiError as error:
            if error.param:
                name = error.param.removeprefix("request.")
                error.param = _PARAMS.get(name, name)
            raise
        deadline = self.clock() + self.settings.sdapi_wait_s
        while True:
            task = await self.store.get(task_id)
            if task is None:  # pragma: no cover - the task was just stored
                raise ApiError(ErrorCode.TASK_NOT_FOUND, "The request was lost.")
            if task.status.finished or self.clock() >= deadline:
                return await run_in(WorkPool.MEDIA, self.render, task, base_url)
            await asyncio.sleep(_POLL_S)

    async def fetch(self, task_id: str, key_id: str | None, base_url: str) -> dict[str, Any]:
        task = await self.store.get(task_id)
        # Another key's request (or one made with no key) is reported as missing: ids are not probes.
        if task is None or task.owner_key_id != key_id:
            raise ApiError(ErrorCode.TASK_NOT_FOUND, "Request not found.")
        return await run_in(WorkPool.MEDIA, self.render, task, base_url)

    def render(self, task: Task, base_url: str) -> dict[str, Any]:
        """The vendor's body for a task in any state. Blocking (may write a blank image)."""
        stored = msgspec.json.decode(task.request)
        vendor = stored.get("sdapi") or {}
        common: dict[str, Any] = {"id": task.task_id}
        if vendor.get("track_id") is not None:
            common["track_id"] = vendor["track_id"]
        if task.status is TaskStatus.FAILED:
            return {"status": "failed", **common, "message": "Failed, Try Again", "reason": task.reason, "output": []}
        meta = _meta(task, stored, vendor)
        if task.status is not TaskStatus.SUCCEED:
            _, eta = self.runner.progress.get(task.task_id, (task.progress_percent, task.eta))
            return {
                "status": "processing",
                **common,
                "tip": "Your image is processing in background, you can get this image using the fetch API.",
                "eta": eta,
                "message": "Try to fetch request after given estimated time",
                "fetch_result": f"{base_url.rstrip('/')}/api/v3/fetch/{task.task_id}",
                "output": [],
                "meta": meta,
            }
        root = base_url.rstrip("/")
        output = []
        for index, item in enumerate(task.outputs):
            key = item.key
            confidence = float((item.nsfw or {}).get("confidence") or 0)  # type: ignore[arg-type]
            if vendor.get("safety_checker") and confidence >= NSFW_THRESHOLD:
                key = self._blank(task.task_id, index, item.key)
            output.append(root + self.storage.signed_path(key, task.url_ttl_s))
        seconds = ((task.complete_time_ms or 0) - (task.execute_time_ms or 0)) / 1000
        return {
            "status": "success",
            **common,
            "generationTime": round(max(seconds, 0.0), 3),
            "output": output,
            "meta": meta,
        }

    def _blank(self, task_id: str, index: int, key: str) -> str:
        """A black image the size of a flagged one, in its place (written once)."""
        from PIL import Image

        blank_key = f"{task_id}/{index}-blank.png"
        if self.storage.open_path(blank_key) is None:
            path = self.storage.open_path(key)
            size = (512, 512)
            if path is not None:
                with Image.open(path) as image:
                    size = image.size
            buffer = io.BytesIO()
            Image.new("RGB", size).save(buffer, format="PNG")
            self.storage.put(blank_key, buffer.getvalue())
        return blank_key

    def webhook_body(self, task: Task, base_url: str) -> bytes | None:
        """The webhook payload of a task submitted through this API; None for other tasks."""
        if "sdapi" not in msgspec.json.decode(task.request):
            return None
        return msgspec.json.encode(self.render(task, base_url))


def _meta(task: Task, stored: dict[str, Any], vendor: dict[str, Any]) -> dict[str, Any]:
    request = stored.get("request") or {}
    meta: dict[str, Any] = {
        "prompt": request.get("prompt", ""),
        "negative_prompt": request.get("negative_prompt", ""),
        "W": request.get("width"),
        "H": request.get("height"),
        "guidance_scale": request.get("guidance_scale"),
        "steps": request.get("steps"),
        "n_samples": request.get("image_num", 1),
        "seed": task.seed,
        "model": task.model,
        "safety_checker": "yes" if vendor.get("safety_checker") else "no",
        "upscale": "yes" if vendor.get("upscale") else "no",
        "vae": "default",
    }
    if "strength" in request:
        meta["strength"] = request["strength"]
    return meta
