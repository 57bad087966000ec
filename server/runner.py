"""The uvicorn server, aware of draining."""

from __future__ import annotations

from types import FrameType

import uvicorn

from server.state import AppState


class DrainingServer(uvicorn.Server):
    """Marks the app as draining the moment a stop signal arrives, so /ready answers 503
    on open connections while in-flight requests finish."""

    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self.app_state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.app_state.draining = True
        super().handle_exit(sig, frame)
