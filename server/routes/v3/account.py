"""``GET /v3/user``: the calling key's balance, in novita-client's shape."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get

from server.accounts_hooks import caller_key_id
from server.state import AppState


class AccountController(Controller):
    path = "/v3"
    tags = ["v3: account"]

    @get("/user", summary="The calling key's credit balance")
    async def user(self, request: Request, app_state: AppState) -> dict[str, Any]:
        # credit_balance is null for a key without a balance (unmetered) and on an open server.
        balance = app_state.accounts.balance(caller_key_id(request))
        credits = int(balance) if balance is not None and float(balance).is_integer() else balance
        return {"allow_features": [], "credit_balance": credits, "free_trial": {}}
