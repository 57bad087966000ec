"""What the running app holds: built once in create_app, reached by handlers via DI."""

from __future__ import annotations

import asyncio

from engines.scheduler import Scheduler
from server.auth import Authenticator
from server.keystore import KeyStore
from server.metrics import Metrics
from server.services import Services
from server.settings import Settings


class AppState:
    def __init__(
        self, settings: Settings, scheduler: Scheduler, keystore: KeyStore, authenticator: Authenticator
    ) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.keystore = keystore
        self.authenticator = authenticator
        self.services = Services(scheduler, settings.limits)
        self.metrics = Metrics(scheduler)
        self.draining = False
        self.load_task: asyncio.Task[None] | None = None
