"""What the running app holds: built once in build_state, reached by handlers via DI."""

from __future__ import annotations

import asyncio
import logging

import httpx

from engines.scheduler import Scheduler
from server.accounts import Accounts
from server.auth import Authenticator
from server.keystore import KeyStore
from server.metrics import Metrics
from server.services import Services
from server.serving.speech import SpeechService
from server.serving.vendor.common import vendor_model
from server.serving.vendor.novassium import NovassiumService
from server.serving.vendor.sdapi import SdApiService
from server.settings import Settings
from server.storage.local import LocalStorage, load_or_create_secret
from server.storage.s3 import S3Uploader
from server.tasks.images import ImageTasks
from server.tasks.models import Task, TaskStatus
from server.tasks.results import build_result, encode_result
from server.tasks.runner import TaskRunner
from server.tasks.speech import SpeechTasks
from server.tasks.store import SqliteTaskStore
from server.tasks.upscale import UpscaleTasks
from server.tasks.videos import VideoTasks
from server.tasks.webhooks import WebhookSender, envelope

log = logging.getLogger("omniserve")

OUTPUT_CLEANUP_INTERVAL_S = 600


class AppState:
    def __init__(
        self, settings: Settings, scheduler: Scheduler, keystore: KeyStore, authenticator: Authenticator
    ) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.keystore = keystore
        self.authenticator = authenticator
        data = settings.data_path
        tasks = settings.tasks
        self.storage = LocalStorage(data / "outputs", load_or_create_secret(data / "url-signing.key"))
        self.services = Services(
            scheduler, settings.limits, storage=self.storage, url_ttl_s=tasks.url_ttl_s, audio=settings.audio
        )
        self.draining = False
        self.load_task: asyncio.Task[None] | None = None
        self._cleaner: asyncio.Task[None] | None = None

        self.task_store = SqliteTaskStore(data / "tasks.sqlite3")
        self.http = httpx.AsyncClient(follow_redirects=False)
        self.webhooks = WebhookSender(self.http, allow_private=tasks.allow_private_urls)
        self.metrics = Metrics(scheduler, tasks=self.task_store, webhooks=self.webhooks)
        self.s3_uploader = S3Uploader(settings.s3, self.storage)
        self.accounts = Accounts(keystore, settings.accounts)
        self.task_runner = TaskRunner(
            self.task_store,
            self.webhooks,
            self._webhook_payload,
            workers=tasks.workers,
            uploader=self.s3_uploader,
            billing=self.accounts,
        )
        self.image_tasks = ImageTasks(
            scheduler,
            self.task_runner,
            self.storage,
            allow_private_urls=tasks.allow_private_urls,
            safety_model=tasks.safety_model,
            batch_wait_ms=tasks.batch_wait_ms,
            max_batch_images=tasks.max_batch_images,
        )
        self.upscale_tasks = UpscaleTasks(scheduler, self.task_runner, self.storage, image_tasks=self.image_tasks)
        self.video_tasks = VideoTasks(scheduler, self.task_runner, self.storage, image_tasks=self.image_tasks)
        self.speech = SpeechService(scheduler, settings.audio)
        self.speech_tasks = SpeechTasks(
            scheduler,
            self.task_runner,
            self.storage,
            image_tasks=self.image_tasks,
            max_chars=settings.audio.max_speech_chars,
            model=tasks.speech_model,
        )
        vendor = settings.vendor
        self.novassium = NovassiumService(
            scheduler,
            self.storage,
            self.accounts,
            vendor,
            model=vendor_model(scheduler, vendor.novassium_model, "novassium_model"),
            url_ttl_s=tasks.url_ttl_s,
        )
        self.sdapi = SdApiService(
            scheduler,
            self.image_tasks,
            self.task_store,
            self.task_runner,
            self.storage,
            self.http,
            vendor,
            model=vendor_model(scheduler, vendor.sdapi_model, "sdapi_model"),
            allow_private_urls=tasks.allow_private_urls,
        )

    @property
    def public_url(self) -> str:
        """Where clients reach this server, for URLs in webhook payloads (a polled task
        result uses the URL the client called instead)."""
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::") else self.settings.host
        return self.settings.public_url or f"http://{host}:{self.settings.port}"

    def _webhook_payload(self, task: Task) -> bytes:
        vendor_body = self.sdapi.webhook_body(task, self.public_url)
        if vendor_body is not None:
            return vendor_body  # the Stable Diffusion API posts its own body, unwrapped
        result = build_result(task, self.storage, self.public_url, presign=self.s3_uploader.presigned_url)
        return envelope(encode_result(result))

    async def start(self) -> None:
        await self.task_runner.start()
        # After the runner's recovery: reservations of tasks it failed are refunded.
        await self.accounts.reconcile(self._task_status)
        self._cleaner = asyncio.create_task(self._clean_outputs())

    async def _clean_outputs(self) -> None:
        """Delete task outputs past their age, now and then; a URL outlives no file."""
        max_age = max(self.settings.tasks.output_max_age_s, self.settings.tasks.url_ttl_s)
        while True:
            removed = await asyncio.to_thread(self.storage.cleanup_expired, max_age)
            if removed:
                log.info("removed %d expired task output folders", removed)
            await asyncio.sleep(OUTPUT_CLEANUP_INTERVAL_S)

    async def _task_status(self, task_id: str) -> TaskStatus | None:
        task = await self.task_store.get(task_id)
        return task.status if task is not None else None

    async def stop(self) -> None:
        if self._cleaner is not None:
            self._cleaner.cancel()
            await asyncio.gather(self._cleaner, return_exceptions=True)
        await self.task_runner.stop()
        await self.http.aclose()
        self.task_store.close()
        self.keystore.close()
