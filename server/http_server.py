"""The uvicorn server, aware of draining."""

from __future__ import annotations

from types import FrameType

import uvicorn

from server.routes.health import Readiness


class DrainingServer(uvicorn.Server):
    """Marks the app as draining the moment a stop signal arrives, so /ready answers 503
    on open connections while in-flight requests finish."""

    def __init__(self, config: uvicorn.Config, readiness: Readiness) -> None:
        super().__init__(config)
        self.readiness = readiness

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.readiness.draining = True
        super().handle_exit(sig, frame)
