"""Files for batches: upload (purpose "batch"), list, retrieve, delete, read; each key sees only
its own. An upload is checked against the batch limits as it arrives, so a file too large, with
too many lines or with an overlong line is refused at once rather than when a batch reads it."""

from __future__ import annotations

import time
import uuid

from engines.workpools import WorkPool, run_in
from schemas.errors import ApiError, ErrorCode
from schemas.openai.batches import FileDeleted, FileList, FileObject
from server.batches.lines import input_lines
from server.batches.store import BatchStore, FileContents, owner_column
from server.errors import bad_request
from server.settings import BatchSettings

MAX_LIST_LIMIT = 10_000


def file_not_found(file_id: str, param: str = "file_id") -> ApiError:
    return ApiError(ErrorCode.API_NOT_FOUND, f"No such file: '{file_id}'.", param=param)


class BatchFiles:
    def __init__(self, store: BatchStore, contents: FileContents, limits: BatchSettings) -> None:
        self.store = store
        self.contents = contents
        self.limits = limits

    def check_upload(self, data: bytes) -> None:
        """The limits on one batch input file (413 for its size, 400 for the rest)."""
        limits = self.limits
        if len(data) > limits.max_file_bytes:
            raise ApiError(
                ErrorCode.REQUEST_BODY_TOO_LARGE,
                f"The file is larger than the {limits.max_file_bytes} bytes accepted.",
                param="file",
            )
        lines = input_lines(data)
        if not lines:
            raise bad_request("The file holds no lines; a batch input file is JSONL, one request per line.", "file")
        if len(lines) > limits.max_lines:
            raise bad_request(f"The file has {len(lines)} lines; a batch takes at most {limits.max_lines}.", "file")
        for number, line in enumerate(lines):
            if len(line) > limits.max_line_bytes:
                raise bad_request(
                    f"Line {number + 1} has {len(line)} bytes; a line may have at most {limits.max_line_bytes}.",
                    "file",
                )

    async def upload(self, key_id: str | None, filename: str, purpose: str, data: bytes) -> FileObject:
        if purpose != "batch":
            raise bad_request(
                f"purpose must be 'batch' (this server keeps files for batches), not {purpose!r}.", "purpose"
            )
        self.check_upload(data)
        file = FileObject(
            id=f"file-{uuid.uuid4().hex}",
            bytes=len(data),
            created_at=int(time.time()),
            filename=filename,
            purpose="batch",
        )
        return await self.add(owner_column(key_id), file, data)

    async def add(self, owner: str, file: FileObject, data: bytes) -> FileObject:
        """Store the bytes, then the record: a crash between leaves an unlisted file, never a
        listed file without its bytes."""
        await run_in(WorkPool.STORAGE, self.contents.write, file.id, data)
        added = await run_in(
            WorkPool.STORAGE, self.store.add_file, owner, file, max_files=self.limits.max_files_per_key
        )
        if not added:
            await run_in(WorkPool.STORAGE, self.contents.delete, file.id)
            raise bad_request(
                f"This key already holds {self.limits.max_files_per_key} files; delete some first.", "file"
            )
        return file

    async def get(self, key_id: str | None, file_id: str, param: str = "file_id") -> FileObject:
        file = await run_in(WorkPool.STORAGE, self.store.file, owner_column(key_id), file_id)
        if file is None:
            raise file_not_found(file_id, param)
        return file

    async def list(self, key_id: str | None, *, purpose: str | None, after: str | None, limit: int) -> FileList:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise bad_request(f"limit must be between 1 and {MAX_LIST_LIMIT}.", "limit")
        files, more = await run_in(
            WorkPool.STORAGE, self.store.files, owner_column(key_id), purpose=purpose, after=after, limit=limit
        )
        return FileList(
            data=files, has_more=more, first_id=files[0].id if files else None, last_id=files[-1].id if files else None
        )

    async def delete(self, key_id: str | None, file_id: str) -> FileDeleted:
        owner = owner_column(key_id)
        await self.get(key_id, file_id)
        user = await run_in(WorkPool.STORAGE, self.store.file_in_use, owner, file_id)
        if user is not None:
            raise bad_request(f"The file is the input of batch '{user}', which has not finished.", "file_id")
        if not await run_in(WorkPool.STORAGE, self.store.delete_file, owner, file_id):
            raise file_not_found(file_id)
        await run_in(WorkPool.STORAGE, self.contents.delete, file_id)
        return FileDeleted(id=file_id)

    async def content(self, key_id: str | None, file_id: str) -> bytes:
        await self.get(key_id, file_id)
        try:
            return await run_in(WorkPool.STORAGE, self.contents.read, file_id)
        except FileNotFoundError:
            raise file_not_found(file_id) from None
