"""``GET /v3/user``: the calling key's balance, in novita-client's shape."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get

from server.accounts import Accounts
from server.accounts_hooks import Caller


class AccountController(Controller):
    path = "/v3"
    tags = ["v3: account"]

    @get("/user", summary="The calling key's credit balance", operation_id="getUser")
    async def user(self, accounts: Accounts, caller: Caller) -> dict[str, Any]:
        # credit_balance is null for a key without a balance (unmetered) and on an open server.
        balance = accounts.balance(caller.key_id)
        credits = int(balance) if balance is not None and float(balance).is_integer() else balance
        return {"allow_features": [], "credit_balance": credits, "free_trial": {}}
