"""Accounts: what a key may spend and how often it may call.

Every API family calls the same three hooks: ``admit`` (subscription and request windows,
once per request that does work), ``reserve`` (take the credits for the outputs asked for,
before the work) and ``settle`` (keep them when the work succeeded, give them back when it
failed). Credits live in the key store, so a reservation is one SQL transaction whose
``UPDATE ... WHERE credits >= cost`` keeps a balance from going negative under any
concurrency; a request id pays at most once.

Request windows are sliding, per key and per API family (server/request_windows.py): in memory for
one server (a restart forgets them: the limits guard fair use, not money), in the shared Redis for
replicas. Requests without a key (open mode) are not accounted at all.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Literal

import msgspec

from engines.base import SamplingOptions
from schemas.errors import ApiError, ErrorCode
from server.keystore import InsufficientCredits, KeyAccount, KeyStore, StoreUnavailable
from server.request_windows import MemoryWindows, RequestWindows
from server.settings import AccountSettings
from server.tasks.models import Task, TaskStatus, TaskType

log = logging.getLogger("omniserve.accounts")

# Keys from settings (auth.static_keys) have no row in the key store: no balance, so they are
# never charged, and the default request windows (each key its own, by its own id).
STATIC_KEY_PREFIX = "static-"
# The API families, each with its own request windows (accounts.windows in the settings).
ApiFamily = Literal["openai", "v3", "novassium", "sdapi"]


def _is_static(key_id: str) -> bool:
    return key_id.startswith(STATIC_KEY_PREFIX)


_IMAGE_TASKS = frozenset({TaskType.TXT_TO_IMG, TaskType.IMG_TO_IMG, TaskType.INPAINTING})
# Speech is reserved before it is spoken, from the text: a generous bound on its length
# (slow speech reads about 10 characters a second), settled to the seconds produced.
SPEECH_CHARS_PER_SECOND = 8.0


def speech_seconds_bound(text: str, speed: float) -> float:
    return (1.0 + len(text) / SPEECH_CHARS_PER_SECOND) / max(speed, 0.01)


class Accounts:
    def __init__(
        self,
        store: KeyStore,
        settings: AccountSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        windows: RequestWindows | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        # The in-memory windows' clock; replaceable after construction (tests move it on).
        self.clock = clock
        self.windows = windows if windows is not None else MemoryWindows(lambda: self.clock())

    def account(self, key_id: str) -> KeyAccount | None:
        return None if _is_static(key_id) else self.store.account(key_id)

    def admit(self, key_id: str | None, family: ApiFamily, *, count: bool = True) -> KeyAccount | None:
        """Refuse a key whose subscription is off, or (``count``) one past its hourly or
        daily window in ``family``; otherwise count the request. The key's account, None
        when open."""
        if key_id is None:
            return None
        account = self.account(key_id)
        if account is not None and not account.subscription_active:
            raise ApiError(ErrorCode.API_NOT_ALLOWED, "This API key has no active subscription.")
        if count:
            self._count(key_id, family, account)
        return account

    def _count(self, key_id: str, family: ApiFamily, account: KeyAccount | None) -> None:
        hour_limit, day_limit = self.settings.windows.limits(family)
        if account is not None:
            hour_limit = hour_limit if account.hour_limit is None else account.hour_limit
            day_limit = day_limit if account.day_limit is None else account.day_limit
        if hour_limit <= 0 and day_limit <= 0:
            return
        refusal = self.windows.admit(key_id, family, hour_limit, day_limit)
        if refusal is not None:
            raise ApiError(
                ErrorCode.RATE_LIMIT_EXCEEDED,
                f"This API key has used its {refusal.window} request limit; "
                f"try again in {max(1, round(refusal.wait_s))} s.",
                retry_after=refusal.wait_s,
            )

    def balance(self, key_id: str | None) -> float | None:
        """The key's credits; None for an unmetered key or an open server."""
        account = self.account(key_id) if key_id is not None else None
        return account.credits if account is not None else None

    def reserve(self, key_id: str | None, request_id: str, cost: float) -> float | None:
        """Take ``cost`` credits for ``request_id``; the balance left (None: unmetered)."""
        if key_id is None or _is_static(key_id) or cost <= 0:
            return self.balance(key_id)
        try:
            return self.store.reserve(request_id, key_id, cost)
        except InsufficientCredits as exc:
            raise ApiError(
                ErrorCode.BILLING_BALANCE_NOT_ENOUGH,
                f"This request costs {cost:g} credits; the balance is {exc.balance:g}.",
            ) from None

    def settle(self, request_id: str, *, succeeded: bool, keep: float | None = None) -> None:
        try:
            self.store.settle(request_id, refund=not succeeded, keep=keep)
        except StoreUnavailable:
            # The work is over and its answer (or error) is on its way: a shared store that went
            # away must not turn it into a 503. The reservation stays open, and this replica's
            # next start settles it (refunded, like any request a stop cut off).
            log.warning("key store unavailable: reservation %s left open", request_id)

    def meter(self, key_id: str | None, account: KeyAccount | None) -> Meter:
        """What one request of this key may spend; free (no key store work) unless the key
        has a balance. ``account`` is the one ``admit`` returned for the request."""
        if key_id is None or account is None or account.credits is None:
            return UNMETERED
        return Meter(self, key_id)

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
        if task.task_type is TaskType.TXT_TO_SPEECH:
            if prices.price_per_speech_second <= 0:
                return 0.0
            request = msgspec.json.decode(task.request).get("request") or {}
            speed = float(request.get("speed") or 1.0)
            seconds = sum(speech_seconds_bound(text, speed) for text in request.get("texts") or [])
            return prices.price_per_speech_second * seconds
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

    def settle_task(self, task_id: str, *, succeeded: bool, audio_seconds: float | None = None) -> None:
        """``audio_seconds``: what a speech task produced, which is what it pays for."""
        keep = None if audio_seconds is None else audio_seconds * self.settings.price_per_speech_second
        self.settle(task_id, succeeded=succeeded, keep=keep)

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


class Charge:
    """The credits of one synchronous request: ``base`` plus ``price`` per unit for at most
    ``most`` units, reserved when made (BILLING_BALANCE_NOT_ENOUGH before any work). Used
    as a context manager around the work, which counts its units with ``add``: on leaving
    it keeps the price of the units used and gives back the rest; an error gives back
    everything. A cancelled or closed block (the client left) pays for what was made."""

    __slots__ = ("_accounts", "_key_id", "_left", "_request_id", "_reserved", "base", "most", "price", "units")

    def __init__(
        self,
        accounts: Accounts | None,
        key_id: str | None,
        base: float,
        price: float,
        most: float,
        *,
        request_id: str | None = None,  # the caller's id for it (a batch line's run); default: a new one
    ) -> None:
        self._accounts = accounts
        self._key_id = key_id
        self._request_id: str | None = None
        self._left: float | None = None
        self.base, self.price, self.most, self.units = base, price, most, 0.0
        self._reserved = False
        if accounts is not None and key_id is not None and base + price * most > 0:
            self._reserved = True
            self._request_id = request_id or uuid.uuid4().hex
            self._left = accounts.reserve(key_id, self._request_id, base + price * most)

    @property
    def remaining(self) -> float | None:
        """The balance left once this charge was reserved (None: unmetered)."""
        if self._reserved or self._accounts is None or self._key_id is None:
            return self._left
        return self._accounts.balance(self._key_id)

    def add(self, units: float) -> None:
        self.units += units

    def close(self, *, failed: bool = False) -> None:
        """Settle now (later calls do nothing)."""
        request_id, self._request_id = self._request_id, None
        if request_id is not None and self._accounts is not None:
            keep = self.base + self.price * min(self.units, self.most)
            self._accounts.settle(request_id, succeeded=not failed, keep=keep)

    def __enter__(self) -> Charge:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close(failed=isinstance(error, Exception))

    async def __aenter__(self) -> Charge:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(failed=isinstance(error, Exception))


class Meter:
    """Makes the charges of one request at the configured prices; UNMETERED makes free ones."""

    __slots__ = ("accounts", "key_id")

    def __init__(self, accounts: Accounts | None, key_id: str | None) -> None:
        self.accounts = accounts
        self.key_id = key_id

    def _charge(self, base: float, price: float, most: float) -> Charge:
        return Charge(self.accounts, self.key_id, base, price, most)

    def tokens(self, prompt_tokens: int, outputs: Sequence[SamplingOptions] = (), *, capped: bool = True) -> Charge:
        """Text: the prompt, and each output's ``max_tokens`` at most. ``capped`` False (the
        client sent no max_tokens): each output is first limited to accounts.default_max_tokens."""
        if self.accounts is None:
            return self._charge(0.0, 0.0, 0.0)
        prices = self.accounts.settings
        if not capped:
            for options in outputs:
                options.max_tokens = min(options.max_tokens, prices.default_max_tokens)
        most = sum(options.max_tokens for options in outputs)
        input_cost = prices.price_per_1k_input_tokens * prompt_tokens / 1000
        return self._charge(input_cost, prices.price_per_1k_output_tokens / 1000, most)

    def speech(self, text: str, speed: float) -> Charge:
        """Speech: reserved from the text's length, settled to the seconds ``add``-ed."""
        price = self.accounts.settings.price_per_speech_second if self.accounts is not None else 0.0
        return self._charge(0.0, price, speech_seconds_bound(text, speed))

    def images(self, count: int) -> Charge:
        """Images: reserved for ``count``, settled to the images ``add``-ed (a client that
        leaves before they are made pays nothing)."""
        price = self.accounts.settings.price_per_image if self.accounts is not None else 0.0
        return self._charge(0.0, price, count)

    def transcription(self, seconds: float) -> Charge:
        """Transcription: the input's seconds, as they are ``add``-ed."""
        price = self.accounts.settings.price_per_transcription_second if self.accounts is not None else 0.0
        return self._charge(0.0, price, seconds)


UNMETERED = Meter(None, None)
