"""The batch state machine on a real store with fake line services: validation, resume after a
stop, cancel, expiry, background priority and the key as lease owner."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engines.admission import Priority, lease_owner, lease_priority_floor
from schemas.errors import ApiError, ErrorCode
from schemas.openai.batches import Batch, BatchCreateRequest
from schemas.openai.embeddings import EmbeddingResponse, EmbeddingUsage
from server.accounts import Meter
from server.batches.files import BatchFiles
from server.batches.runner import BatchRunner
from server.batches.service import Batches
from server.batches.store import FileContents, LineResult, SqliteBatchStore
from server.settings import BatchSettings

ENDPOINT = "/v1/embeddings"
KEY = "key-a"


def line(custom_id: str, text: str = "hello", **body: Any) -> str:
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": {"model": "m", "input": text, **body}}
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeEmbeddings:
    """Records each call and the context it ran in; ``gate`` holds calls until set."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.contexts: list[tuple[Priority, str | None]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()

    async def __call__(self, request: Any, meter: Meter) -> EmbeddingResponse:
        self.calls.append(request.input)
        self.contexts.append((lease_priority_floor.get(), lease_owner.get()))
        self.started.set()
        await self.gate.wait()
        if request.input == "refuse":
            raise ApiError(ErrorCode.INVALID_REQUEST_BODY, "refused by the service", param="input")
        return EmbeddingResponse(data=[], model=request.model, usage=EmbeddingUsage(prompt_tokens=1, total_tokens=1))


class Harness:
    def __init__(self, tmp_path: Path, service: FakeEmbeddings, clock: Clock, concurrent_lines: int = 1) -> None:
        self.store = SqliteBatchStore(tmp_path / "batches.sqlite3")
        self.contents = FileContents(tmp_path / "files")
        limits = BatchSettings(concurrent_lines=concurrent_lines)
        self.files = BatchFiles(self.store, self.contents, limits)
        self.runner = BatchRunner(
            self.store,
            self.contents,
            {ENDPOINT: service},
            accounts=None,
            concurrent_lines=concurrent_lines,
            clock=clock,
        )
        self.batches = Batches(self.store, self.files, self.runner, limits)

    async def submit(self, lines: list[str], window: str = "24h") -> Batch:
        file = await self.files.upload(KEY, "in.jsonl", "batch", "\n".join(lines).encode())
        request = BatchCreateRequest(input_file_id=file.id, endpoint=ENDPOINT, completion_window=window)
        return await self.batches.create(KEY, request)

    async def finished(self, batch_id: str) -> Batch:
        async with asyncio.timeout(10):
            await self.runner.wait(batch_id)
        return await self.batches.get(KEY, batch_id)

    async def lines_of(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        data = await self.files.content(KEY, file_id)
        return [msgspec.json.decode(raw) for raw in data.splitlines()]

    def close(self) -> None:
        self.store.close()


async def test_a_batch_runs_every_line_once_and_keeps_bad_lines_in_the_error_file(tmp_path: Path) -> None:
    service = FakeEmbeddings()
    harness = Harness(tmp_path, service, Clock())
    lines = [line("a", "one"), "{not json", line("b", "refuse"), line("a", "again"), line("c", "three")]
    lines.append(json.dumps({"custom_id": "d", "url": "/v1/chat/completions", "body": {"model": "m", "input": "x"}}))
    batch = await harness.finished((await harness.submit(lines)).id)
    assert batch.status == "completed"
    assert batch.completed_at is not None and batch.in_progress_at is not None and batch.finalizing_at is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (6, 2, 4)
    assert sorted(service.calls) == ["one", "refuse", "three"]
    output = await harness.lines_of(batch.output_file_id)
    assert [entry["custom_id"] for entry in output] == ["a", "c"]
    assert all(entry["response"]["status_code"] == 200 and entry["error"] is None for entry in output)
    assert output[0]["id"].startswith("batch_req_") and output[0]["response"]["body"]["object"] == "list"
    errors = {entry["custom_id"]: entry for entry in await harness.lines_of(batch.error_file_id)}
    assert errors[None]["error"]["code"] == "invalid_json_line"
    assert errors["b"]["response"]["status_code"] == 400
    assert errors["b"]["response"]["body"]["error"]["message"] == "refused by the service"
    assert errors["a"]["error"]["code"] == "duplicate_custom_id"
    assert errors["d"]["error"]["code"] == "mismatched_endpoint"
    harness.close()


async def test_lines_run_at_background_priority_as_the_batch_key(tmp_path: Path) -> None:
    service = FakeEmbeddings()
    harness = Harness(tmp_path, service, Clock())
    await harness.finished((await harness.submit([line("a"), line("b")])).id)
    assert service.contexts == [(Priority.BACKGROUND, KEY)] * 2
    # The floor never leaks into the caller's own context.
    assert lease_priority_floor.get() is Priority.INTERACTIVE
    harness.close()


async def test_a_stopped_runner_resumes_with_the_lines_that_have_no_result(tmp_path: Path) -> None:
    service = FakeEmbeddings()
    clock = Clock()
    harness = Harness(tmp_path, service, clock)
    service.gate.clear()
    batch = await harness.submit([line(f"l{i}", f"text{i}") for i in range(5)])
    # Let two lines finish, then stop while the third is running (as a crash would cut it).
    async with asyncio.timeout(10):
        while len(await asyncio.to_thread(harness.store.recorded_lines, batch.id)) < 2:
            service.gate.set()
            await asyncio.sleep(0)
            service.gate.clear()
            await asyncio.sleep(0.01)
        while len(service.calls) < 3:
            await asyncio.sleep(0.01)
    await harness.runner.stop()
    recorded = await asyncio.to_thread(harness.store.recorded_lines, batch.id)
    assert (await harness.batches.get(KEY, batch.id)).status == "in_progress"
    harness.close()

    second = FakeEmbeddings()
    restarted = Harness(tmp_path, second, clock)
    await restarted.runner.start()
    done = await restarted.finished(batch.id)
    assert done.status == "completed" and done.request_counts.completed == 5
    # Only the lines without a result ran again (the one cut short among them), each once.
    assert sorted(second.calls) == sorted(f"text{i}" for i in range(5) if i not in recorded)
    output = await restarted.lines_of(done.output_file_id)
    assert [entry["custom_id"] for entry in output] == [f"l{i}" for i in range(5)]
    restarted.close()


async def test_cancel_lets_the_running_line_finish_and_starts_no_other(tmp_path: Path) -> None:
    service = FakeEmbeddings()
    harness = Harness(tmp_path, service, Clock())
    service.gate.clear()
    batch = await harness.submit([line(f"l{i}") for i in range(4)])
    async with asyncio.timeout(10):
        await service.started.wait()
    cancelling = await harness.batches.cancel(KEY, batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    service.gate.set()
    done = await harness.finished(batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert len(service.calls) == 1
    assert [entry["custom_id"] for entry in await harness.lines_of(done.output_file_id)] == ["l0"]
    # Cancelling an ended batch changes nothing.
    assert (await harness.batches.cancel(KEY, batch.id)).status == "cancelled"
    harness.close()


async def test_an_expired_batch_keeps_its_results_and_lists_the_lines_it_never_ran(tmp_path: Path) -> None:
    service = FakeEmbeddings()
    clock = Clock()
    harness = Harness(tmp_path, service, clock)
    service.gate.clear()
    batch = await harness.submit([line(f"l{i}") for i in range(3)], window="1h")
    assert batch.expires_at == batch.created_at + 3600
    async with asyncio.timeout(10):
        await service.started.wait()
    clock.now += 3601
    service.gate.set()
    done = await harness.finished(batch.id)
    assert done.status == "expired" and done.expired_at is not None
    assert [entry["custom_id"] for entry in await harness.lines_of(done.output_file_id)] == ["l0"]
    errors = await harness.lines_of(done.error_file_id)
    assert [entry["error"]["code"] for entry in errors] == ["batch_expired", "batch_expired"]
    harness.close()


async def test_a_key_sees_only_its_own_files_and_batches(tmp_path: Path) -> None:
    harness = Harness(tmp_path, FakeEmbeddings(), Clock())
    batch = await harness.finished((await harness.submit([line("a")])).id)
    with pytest.raises(ApiError) as missing:
        await harness.batches.get("key-b", batch.id)
    assert missing.value.status == 404
    with pytest.raises(ApiError):
        await harness.files.get("key-b", batch.input_file_id)
    with pytest.raises(ApiError):
        await harness.batches.create("key-b", BatchCreateRequest(input_file_id=batch.input_file_id, endpoint=ENDPOINT))
    assert (await harness.batches.list("key-b", after=None, limit=20)).data == []
    assert (await harness.files.list("key-b", purpose=None, after=None, limit=100)).data == []
    assert [b.id for b in (await harness.batches.list(KEY, after=None, limit=20)).data] == [batch.id]
    harness.close()


@pytest.mark.parametrize(
    ("data", "status", "limits"),
    [
        (b"x" * 200, 413, {"max_file_bytes": 100}),
        (b"{}\n{}\n{}\n", 400, {"max_lines": 2}),
        (b'{"a": "' + b"y" * 50 + b'"}\n', 400, {"max_line_bytes": 20}),
        (b"\n\n", 400, {}),
    ],
)
async def test_uploads_past_a_limit_are_refused(
    tmp_path: Path, data: bytes, status: int, limits: dict[str, int]
) -> None:
    store = SqliteBatchStore(tmp_path / "b.sqlite3")
    files = BatchFiles(store, FileContents(tmp_path / "f"), BatchSettings(**limits))
    with pytest.raises(ApiError) as refused:
        await files.upload(KEY, "in.jsonl", "batch", data)
    assert refused.value.status == status and refused.value.param == "file"
    store.close()


async def test_files_per_key_window_and_metadata_limits(tmp_path: Path) -> None:
    store = SqliteBatchStore(tmp_path / "b.sqlite3")
    files = BatchFiles(store, FileContents(tmp_path / "f"), BatchSettings(max_files_per_key=1))
    first = await files.upload(KEY, "in.jsonl", "batch", line("a").encode())
    with pytest.raises(ApiError) as full:
        await files.upload(KEY, "in.jsonl", "batch", line("a").encode())
    assert full.value.status == 400
    await files.upload("key-b", "in.jsonl", "batch", line("a").encode())  # another key's own quota
    with pytest.raises(ApiError) as purpose:
        await files.upload("key-c", "in.jsonl", "fine-tune", line("a").encode())
    assert purpose.value.param == "purpose"
    batches = Batches(
        store, files, BatchRunner(store, files.contents, {}, accounts=None, concurrent_lines=1), BatchSettings()
    )
    for window in ("49h", "1d", "0h", ""):
        with pytest.raises(ApiError) as bad_window:
            await batches.create(
                KEY, BatchCreateRequest(input_file_id=first.id, endpoint=ENDPOINT, completion_window=window)
            )
        assert bad_window.value.param == "completion_window"
    with pytest.raises(ApiError) as metadata:
        await batches.create(
            KEY, BatchCreateRequest(input_file_id=first.id, endpoint=ENDPOINT, metadata={"k" * 65: "v"})
        )
    assert metadata.value.param == "metadata"
    store.close()


def test_outputs_are_read_back_in_input_order_a_chunk_at_a_time(tmp_path: Path) -> None:
    store = SqliteBatchStore(tmp_path / "b.sqlite3")
    results = [LineResult(line, line % 3 != 0, f"out-{line}".encode()) for line in range(9)]
    store.record_lines("batch_x", reversed(results))
    assert store.record_line("batch_x", LineResult(4, False, b"again")) is False  # never replaced
    assert list(store.outputs("batch_x", ok=True, chunk=2)) == [r.output for r in results if r.ok]
    assert list(store.outputs("batch_x", ok=False, chunk=2)) == [b"out-0", b"out-3", b"out-6"]
    store.close()
