"""Accounts: what a key may spend and how often it may call.

Every API family calls the same three hooks: ``admit`` (subscription and request windows,
once per request that does work), ``reserve`` (take the credits for the outputs asked for,
before the work) and ``settle`` (keep them when the work succeeded, give them back when it
failed). Credits live in the key store, so a reservation is one SQL transaction whose
``UPDATE ... WHERE credits >= cost`` keeps a balance from going negative under any
concurrency; a request id pays at most once.

Request windows are sliding, per key, kept in memory: a restart forgets them (the limits
guard fair use, not money). Requests without a key (open mode) are not accounted at all.
"""

from __future__ import annotations

import collections
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec

from schemas.errors import ApiError, ErrorCode
from server.keystore import InsufficientCredits, KeyAccount, KeyStore
from server.settings import AccountSettings
from server.tasks.models import Task, TaskStatus, TaskType

HOUR_S = 3600.0
DAY_S = 86400.0
# Keys from settings (auth.static_keys) have no row: no balance, the default windows.
STATIC_KEY = "static"

_IMAGE_TASKS = frozenset({TaskType.TXT_TO_IMG, TaskType.IMG_TO_IMG, TaskType.INPAINTING})


class _Window:
    """Timestamps of the requests admitted in the last ``span`` seconds."""

    __slots__ = ("span", "times")

    def __init__(self, span: float) -> None:
        self.span = span
        self.times: collections.deque[float] = collections.deque()

    def wait(self, limit: int, now: float) -> float:
        """Seconds until one more request fits; 0 when it fits now."""
        while self.times and self.times[0] <= now - self.span:
            self.times.popleft()
        if limit <= 0 or len(self.times) < limit:
            return 0.0
        return self.times[len(self.times) - limit] + self.span - now


class Accounts:
    def __init__(
        self, store: KeyStore, settings: AccountSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self._windows: dict[str, tuple[_Window, _Window]] = {}

    def account(self, key_id: str) -> KeyAccount | None:
        return None if key_id == STATIC_KEY else self.store.account(key_id)

    def admit(self, key_id: str | None, *, count: bool = True) -> KeyAccount | None:
        """Refuse a key whose subscription is off, or (``count``) one past its hourly or
        daily window; otherwise count the request. The key's account, None when open."""
        if key_id is None:
            return None
        account = self.account(key_id)
        if account is not None and not account.subscription_active:
            raise ApiError(ErrorCode.API_NOT_ALLOWED, "This API key has no active subscription.")
        if count:
            self._count(key_id, account)
        return account

    def _count(self, key_id: str, account: KeyAccount | None) -> None:
        hour_limit = self.settings.requests_per_hour
        day_limit = self.settings.requests_per_day
        if account is not None:
            hour_limit = hour_limit if account.hour_limit is None else account.hour_limit
            day_limit = day_limit if account.day_limit is None else account.day_limit
        if hour_limit <= 0 and day_limit <= 0:
            return
        windows = self._windows.get(key_id)
        if windows is None:
            windows = self._windows[key_id] = (_Window(HOUR_S), _Window(DAY_S))
        now = self.clock()
        hour, day = windows
        wait = max(hour.wait(hour_limit, now), day.wait(day_limit, now))
        if wait > 0:
            which = "hourly" if hour.wait(hour_limit, now) > 0 else "daily"
            raise ApiError(
                ErrorCode.RATE_LIMIT_EXCEEDED,
                f"This API key has used its {which} request limit; try again in {max(1, round(wait))} s.",
                retry_after=wait,
            )
        hour.times.append(now)
        day.times.append(now)

    def balance(self, key_id: str | None) -> float | None:
        """The key's credits; None for an unmetered key or an open server."""
        account = self.account(key_id) if key_id is not None else None
        return account.credits if account is not None else None

    def reserve(self, key_id: str | None, request_id: str, cost: float) -> float | None:
        """Take ``cost`` credits for ``request_id``; the balance left (None: unmetered)."""
        if key_id is None or key_id == STATIC_KEY or cost <= 0:
            return self.balance(key_id)
        try:
            return self.store.reserve(request_id, key_id, cost)
        except InsufficientCredits as exc:
            raise ApiError(
                ErrorCode.BILLING_BALANCE_NOT_ENOUGH,
                f"This request costs {cost:g} credits; the balance is {exc.balance:g}.",
            ) from None

    def settle(self, request_id: str, *, succeeded: bool) -> None:
        self.store.settle(request_id, refund=not succeeded)

    @contextlib.asynccontextmanager
    async def charged(self, key_id: str | None, cost: float) -> AsyncIterator[float | None]:
        """Reserve for synchronous work: kept if the block completes, refunded if it raises
        (or the client goes away). Yields the balance left."""
        request_id = uuid.uuid4().hex
        left = self.reserve(key_id, request_id, cost)
        try:
            yield left
        except BaseException:
            self.settle(request_id, succeeded=False)
            raise
        self.settle(request_id, succeeded=True)

    # /v3 tasks: charged at submission under the task id, settled when the task ends.

    def task_cost(self, task: Task) -> float:
        """Credits for the outputs a task will produce, read from its stored body."""
        prices = self.settings
        if task.task_type is TaskType.UPSCALE:
            return prices.price_per_image
        if task.task_type not in _IMAGE_TASKS and task.task_type not in (
            TaskType.TXT_TO_VIDEO,
            TaskType.IMG_TO_VIDEO,
        ):
            return 0.0
        body = msgspec.json.decode(task.request)
        if task.task_type in _IMAGE_TASKS:
            return prices.price_per_image * int((body.get("request") or {}).get("image_num") or 1)
        if prices.price_per_video_frame <= 0:
            return 0.0
        if task.task_type is TaskType.TXT_TO_VIDEO:
            frames = sum(int(segment.get("frames") or 0) for segment in body.get("prompts") or [])
        else:
            frames = int(body.get("frames_num") or 0)
        return prices.price_per_video_frame * frames

    def reserve_task(self, task: Task) -> None:
        if task.owner_key_id is not None:
            self.reserve(task.owner_key_id, task.task_id, self.task_cost(task))

    def settle_task(self, task_id: str, *, succeeded: bool) -> None:
        self.settle(task_id, succeeded=succeeded)

    async def reconcile(self, status_of: Callable[[str], Awaitable[TaskStatus | None]]) -> int:
        """At startup: settle reservations left open by a stop; the number settled.

        A task that ended is settled by its status (the restart recovery failed the ones
        that were running, so they are refunded); a queued task keeps its reservation until
        it runs. Any other reservation belonged to a synchronous request that the stop cut
        off, so it is refunded."""
        settled = 0
        for request_id in self.store.open_reservations():
            status = await status_of(request_id)
            if status is None or status.finished:
                self.settle(request_id, succeeded=status is TaskStatus.SUCCEED)
                settled += 1
        return settled
