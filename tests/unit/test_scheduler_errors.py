"""The engines' and the scheduler's domain errors, and their one mapping onto the API vocabulary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engines.base import ModelKind
from engines.errors import (
    EngineError,
    EngineFailure,
    InvalidJob,
    JobProblem,
    ModelNotFound,
    Overloaded,
    WrongModelKind,
)
from schemas.errors import ApiError, ErrorCode
from server.errors import as_api_error, engine_api_error
from server.tasks.models import Task, TaskStatus, TaskType
from server.tasks.runner import ProgressReporter, TaskOutcome, TaskRunner
from server.tasks.store import SqliteTaskStore


def mapped(error: ApiError) -> tuple[ErrorCode, int, str | None, float | None, str]:
    return error.code, error.status, error.param, error.retry_after, error.message


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            ModelNotFound("nope"),
            (ErrorCode.MODEL_NOT_FOUND, 404, "model", None, "The model 'nope' does not exist."),
        ),
        (
            WrongModelKind("sd", ModelKind.IMAGE, frozenset({ModelKind.CHAT})),
            (
                ErrorCode.INVALID_REQUEST_BODY,
                400,
                "model",
                None,
                "The model 'sd' is a image model and does not serve chat.",
            ),
        ),
        (
            InvalidJob("clip_skip must be between 1 and 11", "clip_skip"),
            (ErrorCode.INVALID_REQUEST_BODY, 400, "clip_skip", None, "clip_skip must be between 1 and 11"),
        ),
        (InvalidJob("bad sampling"), (ErrorCode.INVALID_REQUEST_BODY, 400, None, None, "bad sampling")),
        (
            InvalidJob("image is not a readable PNG, JPEG or WebP image", "image", JobProblem.IMAGE_FORMAT),
            (ErrorCode.INVALID_IMAGE_FORMAT, 400, "image", None, "image is not a readable PNG, JPEG or WebP image"),
        ),
        (
            InvalidJob("file is empty.", "audio", JobProblem.AUDIO_FILE),
            (ErrorCode.INVALID_AUDIO_FILE, 400, "audio", None, "file is empty."),
        ),
        (
            Overloaded("Model 'm' has 3 requests waiting; try again shortly.", retry_after=1.0, queue_full=True),
            (ErrorCode.QUEUE_FULL, 429, None, 1.0, "Model 'm' has 3 requests waiting; try again shortly."),
        ),
        (
            Overloaded("Model 'm' is still loading.", retry_after=5.0),
            (ErrorCode.SERVICE_NOT_AVAILABLE, 503, None, 5.0, "Model 'm' is still loading."),
        ),
        (
            EngineFailure("m"),
            (ErrorCode.ENGINE_ERROR, 500, None, None, "The engine for model 'm' failed to serve the request."),
        ),
        (EngineError("something new"), (ErrorCode.ENGINE_ERROR, 500, None, None, "something new")),
    ],
)
def test_each_engine_error_maps_to_one_code(error: EngineError, expected: tuple[Any, ...]) -> None:
    assert mapped(engine_api_error(error)) == expected
    # The exception handler (and the stream guard) map an uncaught one the same way.
    assert mapped(as_api_error(error)) == expected


def test_every_job_problem_has_a_code() -> None:
    for problem in JobProblem:
        assert engine_api_error(InvalidJob("x", "f", problem)).status == 400


@pytest.mark.parametrize("field", ["sampler", "refiner_switch_at", "scale", "audio"])
def test_without_names_the_engine_side_field_is_the_param(field: str) -> None:
    # Every adapter passes its own names; an error that escapes without them still names its field.
    assert engine_api_error(InvalidJob("m", field)).param == field


def test_an_adapter_names_the_fields_itself() -> None:
    names = {"sampler": "request.sampler_name", "model": "model_name"}.__getitem__
    assert engine_api_error(InvalidJob("m", "sampler"), names).param == "request.sampler_name"
    assert engine_api_error(ModelNotFound("x"), names).param == "model_name"
    assert engine_api_error(InvalidJob("m"), names).param is None  # no field: nothing to name
    identity = engine_api_error(InvalidJob("m", "sampler"), lambda field: field)
    assert identity.param == "sampler"


async def _failed_reason(tmp_path: Path, error: Exception) -> tuple[TaskStatus, str]:
    store = SqliteTaskStore(tmp_path / "tasks.sqlite3")
    runner = TaskRunner(store, None, lambda task: b"")  # type: ignore[arg-type]

    async def execute(task: Task, progress: ProgressReporter) -> TaskOutcome:
        raise error

    runner.register(TaskType.TXT_TO_IMG, execute)
    task = Task(task_type=TaskType.TXT_TO_IMG, model="sd", request=b"{}")
    await store.create(task)
    await runner._run(task.task_id)
    await runner.stop()
    done = await store.get(task.task_id)
    assert done is not None
    return done.status, done.reason


@pytest.mark.parametrize(
    "error",
    [
        InvalidJob("unknown sampler 'x'", "sampler"),
        Overloaded("Model 'sd' is busy; its turn did not come within 600 s.", retry_after=30.0),
        EngineFailure("sd"),
    ],
)
async def test_a_task_that_fails_with_an_engine_error_ends_failed_with_its_message(
    tmp_path: Path, error: EngineError
) -> None:
    assert await _failed_reason(tmp_path, error) == (TaskStatus.FAILED, error.message)


async def test_a_task_that_fails_otherwise_gets_the_generic_reason(tmp_path: Path) -> None:
    reason = "The engine failed while running this task."
    assert await _failed_reason(tmp_path, RuntimeError("/secret/path")) == (TaskStatus.FAILED, reason)
