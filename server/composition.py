"""The composition root: every collaborator of the running app, built once, wired here.

Nothing here decides anything about a request. `build_components` makes the scheduler,
the stores and the capability services; `create_app` (server/app.py) hands each controller
the services it uses through Litestar's dependency injection.
"""

from __future__ import annotations

import asyncio
import logging

from engines.scheduler import Scheduler
from server.accounts import Accounts
from server.auth import Authenticator
from server.batches.files import BatchFiles
from server.batches.lines import line_services
from server.batches.runner import BatchRunner
from server.batches.service import Batches
from server.batches.store import open_batch_store
from server.capabilities.image_editor import ImageEditor
from server.capabilities.images.generation import ImageGenerator
from server.capabilities.images.safety import NsfwDetector
from server.capabilities.img2prompt import ImagePrompts
from server.capabilities.output_limits import OutputLimit
from server.capabilities.reimagine import Reimaginer
from server.capabilities.speech.synthesis import SpeechSynthesis
from server.capabilities.text import TextCapability
from server.capabilities.text.responses import ResponsesService
from server.capabilities.text.responses_store import ResponseStore
from server.capabilities.transcription.transcriber import Transcriber
from server.capabilities.upscale import Upscaler
from server.capabilities.video.generation import VideoGenerator
from server.catalog import ModelCatalog
from server.cluster import open_cluster
from server.data_lock import DataDirLock, DataDirLocked
from server.keystore import KeyStore, StoreUnavailable
from server.metrics import Metrics
from server.outbound import OutboundHttp
from server.prompt_limit import set_max_prompt_chars
from server.routes.health import Readiness
from server.routes.openai.image_jobs import OpenAIImages
from server.routes.openai.video_jobs import OpenAIVideos
from server.routes.v3.flow_routes import FlowRoutes
from server.routes.v3.image_tasks import V3ImageTasks
from server.routes.v3.model_video_tasks import ModelVideoRoutes
from server.routes.v3.speech_tasks import V3SpeechTasks
from server.routes.v3.upscale_tasks import V3UpscaleTasks
from server.routes.v3.video_tasks import V3VideoTasks
from server.routes.vendor.common import vendor_model
from server.routes.vendor.novassium_images import NovassiumImages
from server.routes.vendor.sdapi_tasks import SdApiTasks
from server.settings import Settings
from server.shared_state import output_storage, recent_requests, request_windows, store_link
from server.storage.local import clean_outputs_periodically
from server.storage.s3 import S3Uploader
from server.tasks.queue import open_task_queue
from server.tasks.results import TaskResults, WebhookBodies
from server.tasks.runner import TaskRunner
from server.tasks.store import open_task_store
from server.tasks.submission import TaskSubmission
from server.tasks.webhooks import WebhookSender
from server.telemetry.loop_lag import LoopLagProbe

log = logging.getLogger("omniserve")


class Components:
    def __init__(
        self, settings: Settings, scheduler: Scheduler, keystore: KeyStore, authenticator: Authenticator
    ) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.keystore = keystore
        self.authenticator = authenticator
        data = settings.data_path
        tasks = settings.tasks
        self.load_task: asyncio.Task[None] | None = None
        self.data_lock = DataDirLock(data)
        self._cleaner: asyncio.Task[None] | None = None
        self._tasks_start: asyncio.Task[None] | None = None

        # Windows, duplicate filter and signing key: shared in Redis when the key store is.
        link = store_link(settings, keystore)
        self.storage = output_storage(settings, link)
        # Who runs which model: this server alone, or the replicas sharing the Redis store.
        self.cluster = open_cluster(settings, scheduler.served_models())
        self.catalog = ModelCatalog(scheduler, self.cluster)
        self.readiness = Readiness(scheduler)
        self.accounts = Accounts(keystore, settings.accounts, windows=request_windows(link))
        self.task_store = open_task_store(settings)
        self.outbound = OutboundHttp(
            allow_private=tasks.allow_private_urls, timeout_s=tasks.fetch_timeout_s, max_bytes=tasks.max_fetch_bytes
        )
        self.webhooks = WebhookSender(self.outbound)
        self.loop_lag = LoopLagProbe(settings.metrics.loop_lag_interval_s)
        self.metrics = Metrics(scheduler, tasks=self.task_store, webhooks=self.webhooks, loop_lag=self.loop_lag)
        self.s3_uploader = S3Uploader(settings.s3, self.storage)
        self.webhook_bodies = WebhookBodies(self.storage, settings.public_base_url, self.s3_uploader.presigned_url)
        self.task_runner = TaskRunner(
            self.task_store,
            self.webhooks,
            self.webhook_bodies,
            queue=open_task_queue(settings, scheduler),
            max_task_retries=settings.cluster.max_task_retries,
            workers=tasks.workers,
            uploader=self.s3_uploader,
            billing=self.accounts,
            max_queued=tasks.max_queued,
            max_queued_per_key=tasks.max_queued_per_key,
            max_run_s=tasks.max_run_s,
            drain_grace_s=tasks.drain_grace_s,
            retention_s=tasks.retention_s,
        )
        self.task_runner.outbox.lease_s = tasks.webhook_lease_s
        self.task_results = TaskResults(
            self.task_store,
            self.task_runner.progress,
            self.storage,
            self.s3_uploader.presigned_url,
            cancel=self.task_runner.cancel,
        )

        # Capabilities, and the adapters of each API family over them.
        self.text = TextCapability(scheduler, settings.limits, self.outbound)
        self.response_store = ResponseStore(
            data / "responses.sqlite3",
            retention_s=settings.responses.retention_s,
            max_per_owner=settings.responses.max_stored_per_key,
        )
        self.responses = ResponsesService(
            self.text.chat, self.response_store, max_conversation_bytes=settings.responses.max_conversation_bytes
        )
        self.nsfw = NsfwDetector(scheduler, tasks.safety_model)
        # The Batch API: its lines run through the text services above (server/batches/).
        self.batch_store, batch_contents, batch_leases = open_batch_store(settings, data)
        self.batch_files = BatchFiles(self.batch_store, batch_contents, settings.batches)
        self.batch_runner = BatchRunner(
            self.batch_store,
            batch_contents,
            line_services(self.text),
            accounts=self.accounts,
            concurrent_lines=settings.batches.concurrent_lines,
            leases=batch_leases,
            heartbeat_s=settings.cluster.heartbeat_s,
        )
        self.batches = Batches(self.batch_store, self.batch_files, self.batch_runner, settings.batches)
        self.submission = TaskSubmission(
            self.task_runner,
            allow_private_urls=tasks.allow_private_urls,
            nsfw_detection=self.nsfw.configured,
            cluster=self.cluster,
        )
        set_max_prompt_chars(settings.limits.max_prompt_chars)
        output_limit = OutputLimit.from_limits(settings.limits)
        self.image_generator = ImageGenerator(
            scheduler,
            self.storage,
            self.nsfw,
            batch_wait_ms=tasks.batch_wait_ms,
            max_batch_images=tasks.max_batch_images,
            output_limit=output_limit,
        )
        self.openai_images = OpenAIImages(
            self.image_generator, self.storage, settings.limits, url_ttl_s=tasks.url_ttl_s
        )
        self.v3_images = V3ImageTasks(self.image_generator, self.submission, self.task_runner)
        self.flow_routes = FlowRoutes(self.image_generator, self.v3_images, self.storage, url_ttl_s=tasks.url_ttl_s)
        self.upscaler = Upscaler(scheduler, self.image_generator)
        self.v3_upscale = V3UpscaleTasks(self.upscaler, self.submission, self.task_runner)
        self.image_editor = ImageEditor(scheduler, self.image_generator, settings.image_tools)
        self.image_prompts = ImagePrompts(scheduler, settings.image_tools)
        self.reimaginer = Reimaginer(scheduler, settings.image_tools)

        self.transcriber = Transcriber(scheduler, settings.audio)
        self.speech = SpeechSynthesis(scheduler, self.storage, settings.audio)
        self.v3_speech = V3SpeechTasks(
            self.speech, self.submission, self.task_runner, scheduler, model=tasks.speech_model
        )
        self.videos = VideoGenerator(scheduler, self.storage, output_limit=output_limit)
        self.v3_videos = V3VideoTasks(self.videos, self.submission, self.task_runner, scheduler)
        self.v3_model_videos = ModelVideoRoutes(
            self.v3_videos, self.outbound, fetch_timeout_s=settings.tasks.fetch_timeout_s
        )
        self.openai_videos = OpenAIVideos(
            self.videos,
            self.v3_videos,
            self.task_store,
            self.task_runner.progress,
            # Outputs are deleted once older than both of these (the cleaner started in start()).
            retention_s=max(tasks.output_max_age_s, tasks.url_ttl_s),
        )

        # Vendor families.
        vendor = settings.vendor
        self.novassium = NovassiumImages(
            self.image_generator,
            self.storage,
            vendor,
            model=vendor_model(scheduler, vendor.novassium_model, "novassium_model"),
            url_ttl_s=tasks.url_ttl_s,
        )
        self.sdapi = SdApiTasks(
            scheduler,
            self.v3_images,
            self.task_store,
            self.task_runner,
            self.storage,
            self.outbound,
            vendor,
            model=vendor_model(scheduler, vendor.sdapi_model, "sdapi_model"),
            recent=recent_requests(link, "sdapi-duplicates"),
        )
        self.webhook_bodies.vendor_bodies.append(self.sdapi.webhook_body)

    async def start(self) -> None:
        # Before any recovery: a second process on this data dir would fail our running tasks.
        try:
            self.data_lock.acquire()
        except DataDirLocked as exc:
            log.error("%s", exc)
            raise
        await self.cluster.start()
        if await self._task_store_answers():
            await self.task_runner.start()
        else:
            # A shared task store that is down does not keep the server from starting: task
            # routes answer 503 meanwhile, and the runner starts once the store answers.
            log.warning("task store unavailable: the task runner starts once it answers")
            self._tasks_start = asyncio.create_task(self._start_tasks_when_the_store_answers())
        await self.batch_runner.start()  # unfinished batches resume where their results end
        # After the runner's recovery: reservations of tasks it failed are refunded.
        try:
            await self.accounts.reconcile(self.task_store.status_of)
        except StoreUnavailable:
            # A shared store that is down does not keep the server from starting; these stay
            # open until the next start finds the store up.
            log.warning("key store unavailable: open credit reservations not reconciled")
        max_age = max(self.settings.tasks.output_max_age_s, self.settings.tasks.url_ttl_s)
        self._cleaner = asyncio.create_task(clean_outputs_periodically(self.storage, max_age))
        self.loop_lag.start()

    async def _task_store_answers(self) -> bool:
        try:
            await self.task_store.pending_webhooks()
        except StoreUnavailable:
            return False
        return True

    async def _start_tasks_when_the_store_answers(self) -> None:
        while not await self._task_store_answers():
            await asyncio.sleep(self.settings.store_retry_after_s)
        log.info("task store reachable: starting the task runner")
        await self.task_runner.start()

    def begin_drain(self) -> None:
        """The stop signal arrived (called from the signal handler): start no new task."""
        self.task_runner.drain()

    async def stop(self) -> None:
        await self.cluster.stop()  # first: no replica sends this one more work
        await self.loop_lag.stop()
        if self._cleaner is not None:
            self._cleaner.cancel()
            await asyncio.gather(self._cleaner, return_exceptions=True)
        if self._tasks_start is not None:
            self._tasks_start.cancel()
            await asyncio.gather(self._tasks_start, return_exceptions=True)
        await self.task_runner.stop()
        await self.batch_runner.stop()
        await self.task_store.close()
        self.batch_store.close()
        self.response_store.close()
        self.keystore.close()
        self.data_lock.release()
