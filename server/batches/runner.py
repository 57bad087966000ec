"""Runs batches: validating -> in_progress -> finalizing -> completed (or failed, expired,
cancelling -> cancelled), one asyncio task per unfinished batch, lines through the live routes'
services at background priority.

Durability: a line's result is committed (store.record_line) before it counts; a restart
(``start``) resumes every unfinished batch with the lines that have no result. A line that was
running when the process died had no result, so it runs again: recording is exactly once,
execution at least once for the lines in flight at a crash (at most ``concurrent_lines``).

Replicas sharing a store (``leases`` given): a batch runs where its lease is held, renewed
every ``heartbeat_s``; each heartbeat also looks for unfinished batches whose lease is free
(their replica died, or they were just created) and takes them, resuming where their results
end, and passes on a cancel made through another replica. Each run of a line is numbered in
the store and charged under that number (lines.run_charge_id), so the next run refunds the
charge a dead replica's run left open: a line is paid once, by the run that recorded it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

from opentelemetry import trace

from engines.admission import Priority, lease_owner, lease_priority_floor
from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode
from schemas.openai.batches import Batch, BatchError, BatchErrors, BatchStatus, FileObject
from server.accounts import UNMETERED, Accounts, Meter
from server.batches.lines import (
    LineMeter,
    LineService,
    ParsedLine,
    api_error_result,
    line_error,
    parse_lines,
    run_charge_id,
    success_result,
)
from server.batches.store import BatchLeases, BatchStore, FileContents, LineResult
from server.keystore import StoreUnavailable

log = logging.getLogger("omniserve.batches")
_tracer = trace.get_tracer("omniserve.batches")

# A line the scheduler turned away (queue full, busy past the background wait) is tried again
# after this long (or the Retry-After it was given), until the batch is cancelled or expires.
_RETRY_S = 5.0
_RETRIED = {ErrorCode.QUEUE_FULL, ErrorCode.SERVICE_NOT_AVAILABLE}


class BatchRunner:
    def __init__(
        self,
        store: BatchStore,
        contents: FileContents,
        services: dict[str, LineService],
        *,
        accounts: Accounts | None,
        concurrent_lines: int,
        clock: Callable[[], float] = time.time,
        leases: BatchLeases | None = None,
        heartbeat_s: float = 2.0,
    ) -> None:
        self.store = store
        self.contents = contents
        self.services = services
        self.accounts = accounts
        self.clock = clock
        self._slots = asyncio.Semaphore(concurrent_lines)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._stopping = False
        self.leases = leases
        self.heartbeat_s = heartbeat_s
        self._held: set[str] = set()  # the batches whose lease this runner holds
        self._release_leases = True
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Resume every batch that had not finished when the process last stopped (with
        leases: start the heartbeat, whose first beat takes every batch that nobody runs)."""
        if self.leases is not None:
            if self._heartbeat is None:
                self._heartbeat = asyncio.create_task(self._keep_leases(), name="batch leases")
            return
        for batch_id in await run_in(WorkPool.STORAGE, self.store.active_batch_ids):
            self.launch(batch_id)

    async def stop(self, *, release: bool = True) -> None:
        """Stop running lines (those cut short run again at the next start, or on the replica
        that takes the batch over: at once, as the leases are released). ``release`` False
        leaves the leases to expire, as a crash does (tests)."""
        self._stopping = True
        self._release_leases = release
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def launch(self, batch_id: str) -> None:
        if self._stopping or batch_id in self._tasks:
            return
        self._wake[batch_id] = asyncio.Event()
        task = asyncio.create_task(self._run(batch_id), name=f"batch {batch_id}")
        self._tasks[batch_id] = task
        task.add_done_callback(lambda _: self._forget(batch_id))

    def _forget(self, batch_id: str) -> None:
        self._tasks.pop(batch_id, None)
        self._wake.pop(batch_id, None)

    def notify(self, batch_id: str) -> None:
        """The batch's status changed elsewhere (a cancel): its task looks again."""
        event = self._wake.get(batch_id)
        if event is not None:
            event.set()

    async def wait(self, batch_id: str) -> None:
        """Until the batch's task ends (tests)."""
        task = self._tasks.get(batch_id)
        if task is not None:
            await asyncio.shield(task)

    # -- one batch ---------------------------------------------------------------------------

    async def _run(self, batch_id: str) -> None:
        if self.leases is not None:
            try:
                if not await run_in(WorkPool.STORAGE, self.leases.claim, batch_id):
                    return  # another replica runs it
            except StoreUnavailable:
                return  # a later heartbeat tries again
            self._held.add(batch_id)
        try:
            await self._advance(batch_id)
        except asyncio.CancelledError:
            raise
        except StoreUnavailable:
            # The shared store went away: the batch waits, and the heartbeat that reaches the
            # store again launches it anew (here or, once the lease expired, elsewhere).
            log.warning("batch %s paused: the store is unavailable", batch_id)
        except Exception:
            log.exception("batch %s stopped on an unexpected error", batch_id)
            await self._fail(batch_id, "internal_error", "The batch stopped on a server error.")
        finally:
            if batch_id in self._held:
                self._held.discard(batch_id)
                if self._release_leases and self.leases is not None:
                    with contextlib.suppress(StoreUnavailable):
                        await run_in(WorkPool.STORAGE, self.leases.release, batch_id)

    # -- leases (replicas sharing a store) -----------------------------------------------------

    async def _keep_leases(self) -> None:
        while True:
            try:
                await self._beat()
            except StoreUnavailable:
                log.warning("batch leases not renewed: the store is unavailable")
            except Exception:
                # The heartbeat must outlive any one failure: without it the leases expire.
                log.exception("batch heartbeat failed")
            await asyncio.sleep(self.heartbeat_s)

    async def _beat(self) -> None:
        """Renew this runner's leases (stopping a batch whose lease another replica took,
        waking one cancelled through another replica), then take the batches nobody runs."""
        assert self.leases is not None
        for batch_id in list(self._held):
            status = await run_in(WorkPool.STORAGE, self.leases.renew, batch_id)
            if status is None:
                # Not renewed in time (this process stalled past lease_s): another replica
                # may run the batch now, so this one stops at once, recording nothing more.
                log.warning("batch %s: lease lost, stopping here", batch_id)
                self._held.discard(batch_id)
                task = self._tasks.get(batch_id)
                if task is not None:
                    task.cancel()
            elif status == "cancelling":
                self.notify(batch_id)
        for batch_id in await run_in(WorkPool.STORAGE, self.store.active_batch_ids):
            self.launch(batch_id)

    async def _still_held(self, batch_id: str) -> bool:
        return self.leases is None or await run_in(WorkPool.STORAGE, self.leases.renew, batch_id) is not None

    async def _run_meter(self, batch_id: str, line: int, meter: Meter) -> Meter:
        """With leases, a metered line's run is charged under its number; the previous run's
        charge, if its replica died before settling it, is refunded first (settling is
        idempotent: a charge already settled stays as it is)."""
        accounts = meter.accounts
        if self.leases is None or accounts is None:
            return meter
        run = await run_in(WorkPool.STORAGE, self.leases.line_attempt, batch_id, line)
        if run > 1:
            await run_in(WorkPool.STORAGE, accounts.settle, run_charge_id(batch_id, line, run - 1), succeeded=False)
        return LineMeter(meter, run_charge_id(batch_id, line, run))

    async def _advance(self, batch_id: str) -> None:
        batch = await self._batch(batch_id)
        if batch is None:
            return
        owner = await run_in(WorkPool.STORAGE, self.store.owner_of, batch_id) or ""
        try:
            # Read and checked off the event loop: a file of 50,000 lines takes a while.
            runnable, refused = await run_in(WorkPool.STORAGE, self._read_lines, batch.input_file_id, batch.endpoint)
        except FileNotFoundError:
            await self._fail(batch_id, "missing_input_file", f"The input file '{batch.input_file_id}' is gone.")
            return
        if batch.status == "validating":
            batch = await self._validated(batch_id, len(runnable) + len(refused), refused)
            if batch is None:
                return
        if batch.status == "in_progress":
            done = await run_in(WorkPool.STORAGE, self.store.recorded_lines, batch_id)
            pending = [line for line in runnable if line.line not in done]
            await self._run_lines(batch_id, owner, batch, pending)
            batch = await self._batch(batch_id)
            if batch is None:
                return
        await self._finish(batch_id, owner, batch, [line.line for line in runnable] + [r.line for r in refused])

    def _read_lines(self, file_id: str, endpoint: str) -> tuple[list[ParsedLine], list[LineResult]]:
        return parse_lines(self.contents.read(file_id), endpoint)

    async def _validated(self, batch_id: str, total: int, refused: list[LineResult]) -> Batch | None:
        now = int(self.clock())

        def begin(batch: Batch) -> None:
            batch.status, batch.in_progress_at = "in_progress", now
            batch.request_counts.total = total

        # The refused lines' results and the new status in one transaction: validation
        # happens once, however often the process restarts during it.
        updated = await run_in(WorkPool.STORAGE, self.store.update, batch_id, ["validating"], begin, results=refused)
        return updated if updated is not None else await self._batch(batch_id)

    async def _run_lines(self, batch_id: str, owner: str, batch: Batch, pending: list[ParsedLine]) -> None:
        # Every lease taken below (in the line tasks, which copy this context) is background
        # work of the batch's key: interactive requests go first, keys take turns.
        lease_owner.set(owner or None)
        lease_priority_floor.set(Priority.BACKGROUND)
        service = self.services[batch.endpoint]
        meter = self._meter(owner)
        expires_at = batch.expires_at
        wake = self._wake[batch_id]
        running: set[asyncio.Task[None]] = set()
        try:
            for line in pending:
                # A slot first, then the checks: a cancel or the expiry that came while
                # waiting for the slot stops this line from starting.
                await self._slots.acquire()
                if wake.is_set() or (expires_at is not None and self.clock() >= expires_at):
                    self._slots.release()
                    break
                task = asyncio.create_task(self._line(batch_id, batch.endpoint, service, meter, line, expires_at))
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(lambda _: self._slots.release())
            # In-flight lines finish (also on cancel), then the batch moves on.
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        except BaseException:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise
        if expires_at is not None and self.clock() >= expires_at:
            await self._mark_expiring(batch_id)

    async def _line(
        self,
        batch_id: str,
        endpoint: str,
        service: LineService,
        meter: Meter,
        line: ParsedLine,
        expires_at: int | None,
    ) -> None:
        attributes: dict[str, str | int] = {
            "omniserve.batch.id": batch_id,
            "omniserve.batch.line": line.line,
            "omniserve.batch.custom_id": line.custom_id,
        }
        with _tracer.start_as_current_span(f"batch line {endpoint}", attributes=attributes):
            while True:
                try:
                    run_meter = await self._run_meter(batch_id, line.line, meter)
                    result = success_result(line.line, line.custom_id, await service(line.request, run_meter))
                except ApiError as error:
                    if error.code in _RETRIED and not self._ending(batch_id, expires_at):
                        await asyncio.sleep(max(error.retry_after or _RETRY_S, 1.0))
                        continue
                    result = api_error_result(line.line, line.custom_id, error)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("batch %s line %d failed", batch_id, line.line)
                    failure = ApiError(ErrorCode.ENGINE_ERROR, "The request failed on a server error.")
                    result = api_error_result(line.line, line.custom_id, failure)
                break
            while True:
                try:
                    await run_in(WorkPool.STORAGE, self.store.record_line, batch_id, result)
                    return
                except StoreUnavailable as error:  # a shared store: the result waits for it
                    await asyncio.sleep(max(error.retry_after or _RETRY_S, 1.0))

    def _ending(self, batch_id: str, expires_at: int | None) -> bool:
        wake = self._wake.get(batch_id)
        return (wake is not None and wake.is_set()) or (expires_at is not None and self.clock() >= expires_at)

    def _meter(self, owner: str) -> Meter:
        """Each line is charged to the batch's key as the live route charges it."""
        if self.accounts is None or not owner:
            return UNMETERED
        return self.accounts.meter(owner, self.accounts.account(owner))

    async def _mark_expiring(self, batch_id: str) -> None:
        """Expiry is recorded as a pending end: the finish writes status expired."""
        now = int(self.clock())

        def expire(batch: Batch) -> None:
            batch.expired_at = batch.expired_at or now

        await run_in(WorkPool.STORAGE, self.store.update, batch_id, ["in_progress"], expire)

    async def _finish(self, batch_id: str, owner: str, batch: Batch, all_lines: list[int]) -> None:
        """Write the output and error files, and end the batch, in one transaction."""
        if not await self._still_held(batch_id):
            return  # the replica that took the batch over ends it
        now = int(self.clock())
        ending: BatchStatus
        if batch.status == "in_progress":
            ending = "expired" if batch.expired_at is not None else "completed"

            def finalizing(found: Batch) -> None:
                found.status, found.finalizing_at = "finalizing", now

            updated = await run_in(WorkPool.STORAGE, self.store.update, batch_id, ["in_progress"], finalizing)
            if updated is None:  # cancelled meanwhile
                updated = await self._batch(batch_id)
                if updated is None or updated.status != "cancelling":
                    return
                ending = "cancelled"
            batch = updated
        elif batch.status == "finalizing":
            ending = "expired" if batch.expired_at is not None else "completed"
        elif batch.status == "cancelling":
            ending = "cancelled"
        else:
            return
        if ending == "expired":
            # OpenAI's convention: the lines an expired batch never ran are in its error file.
            recorded = await run_in(WorkPool.STORAGE, self.store.recorded_lines, batch_id)
            never_ran = [
                line_error(number, None, "batch_expired", "This line was not run before the batch expired.")
                for number in sorted(set(all_lines) - recorded)
            ]
            await run_in(WorkPool.STORAGE, self.store.record_lines, batch_id, never_ran)
        files: list[tuple[str, FileObject]] = []
        output_id = await run_in(WorkPool.STORAGE, self._write_outputs, owner, files, batch_id, True)
        error_id = await run_in(WorkPool.STORAGE, self._write_outputs, owner, files, batch_id, False)

        def end(found: Batch) -> None:
            found.status = ending
            found.output_file_id, found.error_file_id = output_id, error_id
            if ending == "completed":
                found.completed_at = now
            elif ending == "expired":
                found.expired_at = found.expired_at or now
            else:
                found.cancelled_at = now

        await run_in(
            WorkPool.STORAGE,
            self.store.update,
            batch_id,
            ["finalizing", "cancelling", "in_progress"],
            end,
            files=files,
        )

    def _write_outputs(self, owner: str, files: list[tuple[str, FileObject]], batch_id: str, ok: bool) -> str | None:
        """The output (``ok``) or error file, streamed from the recorded lines (blocking): its
        id, or None when it would be empty. A crash before the batch's final transaction
        leaves an unlisted file, written again at the next start."""
        file_id = f"file-{uuid.uuid4().hex}"
        size = self.contents.write_lines(file_id, self.store.outputs(batch_id, ok=ok))
        if size == 0:
            self.contents.delete(file_id)
            return None
        name = f"{batch_id}_{'output' if ok else 'error'}.jsonl"
        created = int(self.clock())
        files.append(
            (owner, FileObject(id=file_id, bytes=size, created_at=created, filename=name, purpose="batch_output"))
        )
        return file_id

    async def _fail(self, batch_id: str, code: str, message: str) -> None:
        now = int(self.clock())

        def fail(batch: Batch) -> None:
            batch.status, batch.failed_at = "failed", now
            batch.errors = BatchErrors(data=[BatchError(code=code, message=message)])

        with contextlib.suppress(Exception):
            await run_in(
                WorkPool.STORAGE, self.store.update, batch_id, ["validating", "in_progress", "finalizing"], fail
            )

    async def _batch(self, batch_id: str) -> Batch | None:
        return await run_in(WorkPool.STORAGE, self.store.batch, None, batch_id)
