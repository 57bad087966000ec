"""create_app(components) -> Litestar: routers, guards, dependencies, errors, lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Response, Router, get
from litestar.datastructures import State
from litestar.di import Provide
from opentelemetry.sdk.trace import TracerProvider

from engines import workpools
from engines.admission import AdmissionPolicy
from engines.base import ModelSpec
from engines.devices import discover_devices
from engines.registry import (
    EngineFactory,
    ModelRegistry,
    coqui_factory,
    diffusers_factory,
    esrgan_factory,
    faster_whisper_factory,
    transformers_factory,
    vllm_factory,
)
from engines.scheduler import Scheduler
from engines.sizing import SizingPolicy
from engines.video.animated import animated_checkpoints
from engines.workpools import WorkPool
from server.accounts_hooks import account_guard, caller_dependency
from server.auth import Authenticator, key_guard, require_admin
from server.cancellation import CancelOnDisconnect
from server.cluster import CLUSTER_STATE, served_models
from server.cluster_proxy import PeerProxy
from server.composition import Components
from server.console.pages import ConsoleController
from server.cors import UnlistedOriginsAsSameSite, cors_config
from server.errors import handle_exception
from server.hosts import HOSTS_STATE, HostPolicy, open_server_guard
from server.keystore import open_keystore
from server.metrics import Metrics
from server.metrics_access import METRICS_PATH, MetricsListenerOnlyServesMetrics, metrics_guards
from server.request_bodies import BodyGuard
from server.routes.admin import AdminController
from server.routes.anthropic.messages import MessagesController
from server.routes.api_docs import openapi_config
from server.routes.health import HealthController
from server.routes.openai.batches import batch_routers
from server.routes.openai.images import ImagesController
from server.routes.openai.models import ModelsController
from server.routes.openai.responses_api import ResponsesController
from server.routes.openai.speech import SpeechController
from server.routes.openai.text import TextController
from server.routes.openai.transcriptions import transcriptions_router
from server.routes.openai.videos import VideosController
from server.routes.openapi import document_error_responses
from server.routes.v3.account import AccountController
from server.routes.v3.files import FilesController
from server.routes.v3.flow_routes import FlowModelsController
from server.routes.v3.image_editor import image_editor_router
from server.routes.v3.images import V3ImageController
from server.routes.v3.img2prompt_reimagine import V3Img2PromptReimagineController
from server.routes.v3.models import ModelsV3Controller
from server.routes.v3.speech import V3SpeechController
from server.routes.v3.tasks import TaskResultController
from server.routes.v3.videos import V3VideoController
from server.routes.vendor.novassium import NovassiumController, novassium_key_guard
from server.routes.vendor.sdapi import SdApiController
from server.settings import Settings
from server.startup_heap import freeze_startup_heap
from server.telemetry import tracing
from server.telemetry.http import RequestTelemetry

log = logging.getLogger("omniserve")

VERSION = "0.1.0"


def default_factories(settings: Settings) -> dict[str, EngineFactory]:
    return {
        "vllm": vllm_factory(cpu_threads=settings.vllm.cpu_threads),
        "diffusers": diffusers_factory(),
        "esrgan": esrgan_factory(),
        "transformers": transformers_factory(),
        "faster-whisper": faster_whisper_factory(),
        "coqui": coqui_factory(),
    }


def build_components(
    settings: Settings, specs: list[ModelSpec], factories: dict[str, EngineFactory] | None = None
) -> Components:
    workpools.configure(
        {
            WorkPool.ENGINE: settings.threads.engine,
            WorkPool.MEDIA: settings.threads.media,
            WorkPool.NETWORK: settings.threads.network,
            WorkPool.STORAGE: settings.threads.storage,
        }
    )
    # SD 1.x image models get AnimateDiff video twins (txt2video may name a checkpoint).
    specs = [*specs, *animated_checkpoints(specs, settings.video.motion_adapter)]
    registry = ModelRegistry(specs, factories or default_factories(settings))
    policy = AdmissionPolicy(
        max_concurrency=settings.limits.max_running_per_model,
        max_queue_depth=settings.limits.max_queue_depth,
        queue_timeout_s=settings.limits.queue_timeout_s,
        idle_ttl_s=settings.scheduler.idle_ttl_s,
        background_timeout_s=settings.scheduler.background_timeout_s,
        background_aging_s=settings.scheduler.background_aging_s,
    )
    scheduling = settings.scheduler
    sizing = SizingPolicy(
        default_sequences=scheduling.default_sequences,
        default_max_model_len=scheduling.default_max_model_len,
        kv_cache_share=scheduling.kv_cache_share,
        vllm_overhead_bytes=scheduling.vllm_overhead_bytes,
        activation_factor=scheduling.activation_factor,
    )
    devices = discover_devices(scheduling.host_budget, scheduling.gpu_budget)
    # Before anything opens: a catalog model that can never fit raises FootprintTooLarge here.
    served = served_models(registry, settings.cluster.serve)
    scheduler = Scheduler(registry, policy, devices, sizing, served=None if served is None else served.__contains__)
    keystore = open_keystore(
        settings.store_url,
        settings.data_path,
        timeout_s=settings.store_timeout_s,
        retry_after_s=settings.store_retry_after_s,
    )
    authenticator = Authenticator(
        keystore,
        settings.auth.static_keys,
        open_when_no_keys=settings.is_loopback or settings.auth.allow_open,
        static_admin_keys=settings.auth.static_admin_keys,
    )
    return Components(settings, scheduler, keystore, authenticator)


@get(
    METRICS_PATH,
    media_type="text/plain; version=0.0.4",
    summary="Prometheus metrics (who may read them: settings metrics.access)",
    operation_id="metrics",
    tags=["operations"],
)
async def metrics(metrics: Metrics) -> Response[bytes]:
    await metrics.refresh()
    return Response(metrics.render(), media_type="text/plain; version=0.0.4")


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def _dependencies(components: Components) -> dict[str, Provide]:
    """What controllers may ask for, by parameter name: each service built once."""
    text = components.text
    services: dict[str, Any] = {
        "scheduler": components.scheduler,
        "readiness": components.readiness,
        "metrics": components.metrics,
        "catalog": components.catalog,
        "accounts": components.accounts,
        "storage": components.storage,
        "results": components.task_results,
        "authenticator": components.authenticator,
        "cluster": components.cluster,
        # Images.
        "images": components.openai_images,
        "v3_images": components.v3_images,
        "flow_routes": components.flow_routes,
        "v3_upscale": components.v3_upscale,
        "image_editor": components.image_editor,
        "image_prompts": components.image_prompts,
        "reimaginer": components.reimaginer,
        "novassium": components.novassium,
        "sdapi": components.sdapi,
        # Audio and video.
        "speech": components.speech,
        "v3_speech": components.v3_speech,
        "transcriber": components.transcriber,
        "videos": components.openai_videos,
        "v3_videos": components.v3_videos,
        "v3_model_videos": components.v3_model_videos,
        "chat": text.chat,
        "turns": text.turns,
        "responses": components.responses,
        "completions": text.completions,
        "embeddings": text.embeddings,
        "rerank": text.rerank,
        "pooling": text.pooling,
        "tokenize": text.tokenize,
        "batch_files": components.batch_files,
        "batches": components.batches,
    }
    dependencies = {
        name: Provide(_constant(value), sync_to_thread=False, use_cache=True) for name, value in services.items()
    }
    dependencies["caller"] = Provide(caller_dependency(components.accounts), sync_to_thread=False)
    return dependencies


async def load_startup_models(scheduler: Scheduler) -> None:
    """The startup models, then the startup heap frozen (server/startup_heap.py), with no
    await between, so /ready says 200 only once full collections no longer walk that heap."""
    await scheduler.load_all()
    freeze_startup_heap()


def create_app(components: Components, *, tracer_provider: TracerProvider | None = None) -> Litestar:
    """With ``tracer_provider`` (the globally installed one), every request gets a server span."""

    @asynccontextmanager
    async def engines_lifespan(_: Litestar) -> AsyncIterator[None]:
        # Models load in the background: /health answers at once and /ready says 503
        # until the startup models are resident (engines/scheduler.py: load_all).
        scheduler = components.scheduler
        components.load_task = asyncio.create_task(load_startup_models(scheduler))
        scheduler.start()
        await components.start()
        try:
            yield
        finally:
            components.readiness.draining = True
            components.load_task.cancel()
            await asyncio.gather(components.load_task, return_exceptions=True)
            await components.stop()
            await scheduler.stop()
            await scheduler.unload_all()

    require_key = key_guard(components.authenticator)
    openai_account = account_guard(components.accounts, "openai")

    def openai_router(path: str) -> Router:
        return Router(
            path=path,
            route_handlers=[
                TextController,
                ResponsesController,
                ImagesController,
                ModelsController,
                SpeechController,
                transcriptions_router(components.settings.audio),
                VideosController,
                *batch_routers(components.settings.batches),
            ],
            guards=[require_key, openai_account],
        )

    # Anthropic's Messages API: under /v1 beside OpenAI's routes, with their key and windows.
    anthropic_router = Router(path="/v1", route_handlers=[MessagesController], guards=[require_key, openai_account])

    settings = components.settings
    hosts = HostPolicy(settings)
    cors = cors_config(settings.http)
    admin_router = Router(path="/", route_handlers=[AdminController], guards=[require_key, require_admin])
    v3_router = Router(
        path="/",
        route_handlers=[
            V3ImageController,
            FlowModelsController,
            image_editor_router(components.settings.image_tools),
            V3Img2PromptReimagineController,
            V3SpeechController,
            V3VideoController,
            TaskResultController,
            ModelsV3Controller,
            AccountController,
        ],
        guards=[require_key, account_guard(components.accounts, "v3")],
    )
    app = Litestar(
        route_handlers=[
            HealthController,
            # The page holds no data (its calls carry the user's key), so it needs none.
            ConsoleController,
            Router(
                path="/", route_handlers=[metrics], guards=metrics_guards(settings.metrics, components.authenticator)
            ),
            openai_router("/openai/v1"),
            openai_router("/v1"),
            anthropic_router,
            v3_router,
            admin_router,
            FilesController,
            # Vendor families check their keys themselves: in a header or in the JSON body.
            Router(
                path="/",
                route_handlers=[NovassiumController],
                guards=[novassium_key_guard(components.authenticator, components.accounts)],
            ),
            SdApiController,
        ],
        # Every route: on an open server, a trusted Host and JSON bodies sent as JSON.
        guards=[open_server_guard(components.authenticator, hosts)],
        state=State({HOSTS_STATE: hosts, CLUSTER_STATE: components.cluster}),
        dependencies=_dependencies(components),
        exception_handlers={Exception: handle_exception},
        lifespan=[engines_lifespan],
        request_max_body_size=components.settings.limits.max_body_bytes,
        cors_config=cors,
        openapi_config=openapi_config("omniserve", VERSION),
        debug=False,
        logging_config=None,
        **tracing.app_options(tracer_provider),
    )
    document_error_responses(app)
    # Outermost, so unknown routes and errors get a request id, a metric and a log line too;
    # inside it, a request whose client leaves is cancelled; innermost, JSON bodies nested
    # too deeply are refused before anything decodes them (server/request_bodies.py), and
    # an Origin that CORS does not allow is dropped (server/cors.py).
    handler: Any = BodyGuard(app.asgi_handler, settings.limits.max_json_depth)
    if cors is not None:
        handler = UnlistedOriginsAsSameSite(handler, cors)
    if settings.metrics.access == "port":
        handler = MetricsListenerOnlyServesMetrics(handler, settings.metrics.port)
    if settings.cluster.proxy_to_peers:
        cluster = settings.cluster
        proxy = PeerProxy(
            handler,
            components.cluster,
            connect_timeout_s=cluster.proxy_connect_timeout_s,
            read_timeout_s=cluster.proxy_read_timeout_s,
        )
        app.on_shutdown.append(proxy.aclose)
        handler = proxy
    app.asgi_handler = RequestTelemetry(CancelOnDisconnect(handler))
    return app
