"""The Batch API's operations (create, retrieve, list, cancel), scoped to the calling key."""

from __future__ import annotations

import re
import uuid

from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode
from schemas.openai.batches import Batch, BatchCreateRequest, BatchList
from server.batches.files import BatchFiles
from server.batches.runner import BatchRunner
from server.batches.store import BatchStore, owner_column
from server.errors import bad_request
from server.settings import BatchSettings

_WINDOW = re.compile(r"^([1-9][0-9]*)h$")
MAX_LIST_LIMIT = 100
# OpenAI's metadata bounds.
_MAX_METADATA_PAIRS, _MAX_METADATA_KEY, _MAX_METADATA_VALUE = 16, 64, 512


def batch_not_found(batch_id: str) -> ApiError:
    return ApiError(ErrorCode.API_NOT_FOUND, f"No such batch: '{batch_id}'.", param="batch_id")


def window_seconds(window: str, max_hours: int) -> int:
    """ "24h" -> 86400; any whole number of hours from 1 to ``max_hours`` (OpenAI offers "24h",
    Novita a fixed 48 hours)."""
    match = _WINDOW.match(window)
    if match is None or int(match.group(1)) > max_hours:
        raise bad_request(
            f"completion_window must be a whole number of hours from 1h to {max_hours}h, such as '24h'.",
            "completion_window",
        )
    return int(match.group(1)) * 3600


def check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > _MAX_METADATA_PAIRS:
        raise bad_request(f"metadata holds at most {_MAX_METADATA_PAIRS} pairs.", "metadata")
    for key, value in metadata.items():
        if len(key) > _MAX_METADATA_KEY or len(value) > _MAX_METADATA_VALUE:
            raise bad_request(
                f"metadata keys hold at most {_MAX_METADATA_KEY} characters and values {_MAX_METADATA_VALUE}.",
                "metadata",
            )


class Batches:
    def __init__(self, store: BatchStore, files: BatchFiles, runner: BatchRunner, limits: BatchSettings) -> None:
        self.store = store
        self.files = files
        self.runner = runner
        self.limits = limits

    async def create(self, key_id: str | None, request: BatchCreateRequest) -> Batch:
        window = window_seconds(request.completion_window, self.limits.max_window_h)
        check_metadata(request.metadata)
        file = await self.files.get(key_id, request.input_file_id, "input_file_id")
        if file.purpose != "batch":
            raise bad_request(
                f"The file '{file.id}' has purpose {file.purpose!r}; a batch reads a 'batch' file.", "input_file_id"
            )
        now = int(self.runner.clock())
        batch = Batch(
            id=f"batch_{uuid.uuid4().hex}",
            endpoint=request.endpoint,
            input_file_id=file.id,
            completion_window=request.completion_window,
            status="validating",
            created_at=now,
            expires_at=now + window,
            metadata=request.metadata,
        )
        await run_in(WorkPool.STORAGE, self.store.add_batch, owner_column(key_id), batch)
        # Validation runs in the batch's task: the lines' errors go to the error file.
        self.runner.launch(batch.id)
        return batch

    async def get(self, key_id: str | None, batch_id: str) -> Batch:
        batch = await run_in(WorkPool.STORAGE, self.store.batch, owner_column(key_id), batch_id)
        if batch is None:
            raise batch_not_found(batch_id)
        return batch

    async def list(self, key_id: str | None, *, after: str | None, limit: int) -> BatchList:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise bad_request(f"limit must be between 1 and {MAX_LIST_LIMIT}.", "limit")
        batches, more = await run_in(
            WorkPool.STORAGE, self.store.batches, owner_column(key_id), after=after, limit=limit
        )
        return BatchList(
            data=batches,
            has_more=more,
            first_id=batches[0].id if batches else None,
            last_id=batches[-1].id if batches else None,
        )

    async def cancel(self, key_id: str | None, batch_id: str) -> Batch:
        """validating or in_progress -> cancelling: no new line starts, those running finish,
        then cancelled. A batch that already ended, or is ending, is answered as it is."""
        await self.get(key_id, batch_id)
        now = int(self.runner.clock())

        def cancelling(batch: Batch) -> None:
            batch.status, batch.cancelling_at = "cancelling", now

        await run_in(WorkPool.STORAGE, self.store.update, batch_id, ["validating", "in_progress"], cancelling)
        self.runner.notify(batch_id)
        return await self.get(key_id, batch_id)
