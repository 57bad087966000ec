"""The Files API (batch input and output files) and the Batch API: parse, call, answer."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, Router, delete, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body

from schemas.openai.batches import (
    Batch,
    BatchCreateRequest,
    BatchList,
    FileDeleted,
    FileList,
    FileObject,
    FileUploadRequest,
)
from server.accounts_hooks import Caller
from server.batches.files import BatchFiles
from server.batches.service import Batches
from server.errors import bad_request
from server.routes.openapi import file_download, operation_id
from server.settings import BatchSettings
from server.validation import ParsedForm, parse_into_data, read_upload_form

# The form fields beside the file (purpose, the multipart framing) fit well within this.
_FORM_OVERHEAD_BYTES = 64 * 1024


_FILENAME = "omniserve_upload_filename"


async def _upload_form(request: Request[Any, Any, Any]) -> FileUploadRequest:
    """The form as the openai SDK sends it; the file part's name is kept in the request's
    state for the file object."""
    form = await read_upload_form(request, "the JSONL file as a part named 'file'")
    try:
        uploads = form.getall("file", [])
        if len(uploads) != 1 or not isinstance(uploads[0], UploadFile):
            raise bad_request("Send exactly one file, as a file part named 'file'.", "file")
        purpose = form.get("purpose")
        if not isinstance(purpose, str):
            raise bad_request("purpose is required ('batch').", "purpose")
        request.scope["state"][_FILENAME] = uploads[0].filename or "upload.jsonl"
        return FileUploadRequest(file=await uploads[0].read(), purpose=purpose)
    finally:
        await form.close()


class BatchFilesController(Controller):
    path = "/files"
    tags = ["openai: batches"]

    @post(
        "/",
        status_code=200,
        operation_id=operation_id("createFile"),
        summary="Upload a batch input file (JSONL, purpose 'batch')",
        guards=[parse_into_data(_upload_form)],
        dto=ParsedForm,
        return_dto=None,
    )
    async def upload(
        self,
        data: Annotated[FileUploadRequest, Body(media_type=RequestEncodingType.MULTI_PART)],
        request: Request[Any, Any, Any],
        batch_files: BatchFiles,
        caller: Caller,
    ) -> FileObject:
        filename = request.scope["state"][_FILENAME]
        return await batch_files.upload(caller.key_id, filename, data.purpose, data.file)

    @get("/", operation_id=operation_id("listFiles"), summary="List the key's files")
    async def list_files(
        self,
        batch_files: BatchFiles,
        caller: Caller,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = 10_000,
    ) -> FileList:
        return await batch_files.list(caller.key_id, purpose=purpose, after=after, limit=limit)

    @get("/{file_id:str}", operation_id=operation_id("retrieveFile"), summary="Retrieve a file's metadata")
    async def retrieve(self, file_id: str, batch_files: BatchFiles, caller: Caller) -> FileObject:
        return await batch_files.get(caller.key_id, file_id)

    @delete("/{file_id:str}", status_code=200, operation_id=operation_id("deleteFile"), summary="Delete a file")
    async def delete_file(self, file_id: str, batch_files: BatchFiles, caller: Caller) -> FileDeleted:
        return await batch_files.delete(caller.key_id, file_id)

    @get(
        "/{file_id:str}/content",
        operation_id=operation_id("downloadFile"),
        summary="A file's content",
        operation_class=file_download(["application/jsonl"]),
    )
    async def content(self, file_id: str, batch_files: BatchFiles, caller: Caller) -> Response[bytes]:
        return Response(await batch_files.content(caller.key_id, file_id), media_type="application/jsonl")


class BatchesController(Controller):
    path = "/batches"
    tags = ["openai: batches"]

    @post("/", status_code=200, operation_id=operation_id("createBatch"), summary="Create a batch")
    async def create(self, data: BatchCreateRequest, batches: Batches, caller: Caller) -> Batch:
        return await batches.create(caller.key_id, data)

    @get("/", operation_id=operation_id("listBatches"), summary="List the key's batches, newest first")
    async def list_batches(
        self, batches: Batches, caller: Caller, after: str | None = None, limit: int = 20
    ) -> BatchList:
        return await batches.list(caller.key_id, after=after, limit=limit)

    @get("/{batch_id:str}", operation_id=operation_id("retrieveBatch"), summary="Retrieve a batch")
    async def retrieve(self, batch_id: str, batches: Batches, caller: Caller) -> Batch:
        return await batches.get(caller.key_id, batch_id)

    @post("/{batch_id:str}/cancel", status_code=200, operation_id=operation_id("cancelBatch"), summary="Cancel a batch")
    async def cancel(self, batch_id: str, batches: Batches, caller: Caller) -> Batch:
        return await batches.cancel(caller.key_id, batch_id)


def batch_routers(limits: BatchSettings) -> list[Router]:
    """The Files and Batch routes; an upload may be as large as a batch file is allowed to be."""
    return [
        Router(
            path="/",
            route_handlers=[BatchFilesController],
            request_max_body_size=limits.max_file_bytes + _FORM_OVERHEAD_BYTES,
        ),
        Router(path="/", route_handlers=[BatchesController]),
    ]
