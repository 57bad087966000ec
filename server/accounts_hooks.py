"""Where HTTP meets accounts: the guard of the key-guarded routers, and the caller's key id."""

from __future__ import annotations

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler


def caller_key_id(connection: ASGIConnection) -> str | None:
    """The key id that ``require_api_key`` found (None on an open server)."""
    key_id: str | None = connection.scope.get("state", {}).get("api_key_id")
    return key_id


async def enforce_account(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Runs after ``require_api_key``. Every request checks the subscription; only POSTs
    (the requests that do work) count against the request windows, so polling a task
    result or listing models never uses them up."""
    accounts = connection.app.state.omniserve.accounts
    does_work = isinstance(connection, Request) and connection.method == "POST"
    accounts.admit(caller_key_id(connection), count=does_work)
