from __future__ import annotations

from typing import Any

import msgspec


class V3Error(msgspec.Struct, kw_only=True):
    """Novita's error envelope: ``code`` is the HTTP status, ``reason`` the ErrorCode."""

    code: int
    reason: str
    message: str
    metadata: dict[str, Any] = {}
