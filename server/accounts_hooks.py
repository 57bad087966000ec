"""Where HTTP meets accounts: the guard of the key-guarded routers, and the caller's key id."""

from __future__ import annotations

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from server.accounts import UNMETERED, Meter


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
    key_id = caller_key_id(connection)
    account = accounts.admit(key_id, count=does_work)
    if key_id is not None:
        connection.scope["state"]["api_account"] = account


def caller_meter(connection: ASGIConnection) -> Meter:
    """What the caller's request may spend, from the account its guard read: UNMETERED (no
    key store work) for an open server or a key without a balance."""
    state = connection.scope.get("state", {})
    key_id: str | None = state.get("api_key_id")
    if key_id is None:
        return UNMETERED
    meter: Meter = connection.app.state.omniserve.accounts.meter(key_id, state.get("api_account"))
    return meter
