"""The uvicorn server, aware of draining."""

from __future__ import annotations

from collections.abc import Callable
from types import FrameType

import uvicorn

from server.routes.health import Readiness


class DrainingServer(uvicorn.Server):
    """Marks the app as draining the moment a stop signal arrives, so /ready answers 503
    on open connections while in-flight requests finish. ``on_drain`` runs then too (the
    task runner stops starting tasks); it must be safe to call from a signal handler."""

    def __init__(
        self, config: uvicorn.Config, readiness: Readiness, on_drain: Callable[[], None] | None = None
    ) -> None:
        super().__init__(config)
        self.readiness = readiness
        self.on_drain = on_drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.readiness.draining = True
        if self.on_drain is not None:
            self.on_drain()
        super().handle_exit(sig, frame)
