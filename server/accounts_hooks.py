"""Where HTTP meets accounts: the guard of the key-guarded routers, and the caller.

The key guard (server/auth.py) finds the key id; the account guard checks the key's
subscription and request windows; the `Caller` dependency gives a handler the key id and
the meter its work is charged through.
"""

from __future__ import annotations

from collections.abc import Callable

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from server.accounts import UNMETERED, Accounts, ApiFamily, Meter


class Caller:
    """Who is calling: the key id (None on an open server) and what their work may spend."""

    __slots__ = ("key_id", "meter")

    def __init__(self, key_id: str | None, meter: Meter) -> None:
        self.key_id = key_id
        self.meter = meter


def caller_key_id(connection: ASGIConnection) -> str | None:
    """The key id that the key guard found (None on an open server)."""
    key_id: str | None = connection.scope.get("state", {}).get("api_key_id")
    return key_id


def account_guard(accounts: Accounts, family: ApiFamily) -> Guard:
    async def enforce_account(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        """Runs after the key guard. Every request checks the subscription; only POSTs (the
        requests that do work) count against the request windows, so polling a task result
        or listing models never uses them up. The windows are the router's family's."""
        does_work = isinstance(connection, Request) and connection.method == "POST"
        key_id = caller_key_id(connection)
        account = accounts.admit(key_id, family, count=does_work)
        if key_id is not None:
            connection.scope["state"]["api_account"] = account

    return enforce_account


def caller_dependency(accounts: Accounts) -> Callable[[Request], Caller]:
    def caller(request: Request) -> Caller:
        """The meter comes from the account the guard already read: UNMETERED (no key store
        work) for an open server or a key without a balance."""
        state = request.scope.get("state", {})
        key_id: str | None = state.get("api_key_id")
        if key_id is None:
            return Caller(None, UNMETERED)
        return Caller(key_id, accounts.meter(key_id, state.get("api_account")))

    return caller
