"""Engine-side failures, in engine terms: no HTTP status, no error code, no wire field name.

Engines and the scheduler raise these; the server maps each onto its API vocabulary in one
place (``server.errors.engine_api_error``), naming a field as the calling API names it.
``message`` is safe to show a client: no paths, keys or tracebacks.
"""

from __future__ import annotations

import enum

from engines.base import ModelKind


class EngineError(Exception):
    """Base of every failure an engine or the scheduler reports to its caller."""

    # The engine-side field at fault (a job struct's field name), if one is.
    field: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"


class ModelNotFound(EngineError):
    """No catalog model has this name or alias."""

    field = "model"

    def __init__(self, name: str) -> None:
        super().__init__(f"The model '{name}' does not exist.")
        self.model = name


# How a refusal names what a kind of model serves.
_SERVES = {
    ModelKind.CHAT: "chat",
    ModelKind.EMBEDDING: "embeddings",
    ModelKind.RERANK: "rerank or score",
    ModelKind.IMAGE: "images",
    ModelKind.SAFETY: "safety classification",
    ModelKind.UPSCALER: "upscaling",
    ModelKind.SEGMENTATION: "background removal",
    ModelKind.TRANSCRIPTION: "transcription",
    ModelKind.SPEECH: "speech",
    ModelKind.VIDEO: "videos",
    ModelKind.CAPTION: "image captions",
    ModelKind.VARIATION: "image variations",
}


class WrongModelKind(EngineError):
    """The catalog model exists but is of a kind that does not serve the engine asked for."""

    field = "model"

    def __init__(self, model: str, kind: ModelKind, wanted: frozenset[ModelKind]) -> None:
        serves = " or ".join(_SERVES[k] for k in ModelKind if k in wanted)
        super().__init__(f"The model '{model}' is a {kind.value} model and does not serve {serves}.")
        self.model = model
        self.kind = kind
        self.wanted = wanted


class JobProblem(enum.StrEnum):
    """What is wrong with a job, as far as the engine can tell."""

    INVALID = "invalid"  # a value the engine cannot run (unknown name, out of range, too long)
    IMAGE_FORMAT = "image_format"  # image bytes no decoder reads (not PNG, JPEG or WebP)
    AUDIO_FILE = "audio_file"  # audio bytes that are no readable audio, hold none, or run too long


class InvalidJob(EngineError):
    """The job cannot run as given; the caller's input is at fault, not the engine."""

    def __init__(self, message: str, field: str | None = None, problem: JobProblem = JobProblem.INVALID) -> None:
        super().__init__(message)
        self.field = field
        self.problem = problem


class Overloaded(EngineError):
    """The model cannot take the work now; the same request may succeed after ``retry_after`` seconds.

    ``queue_full``: refused at once, its queue is full. Otherwise it waited in vain: busy past
    the deadline, still loading, no room on its device, or failed to load.
    """

    def __init__(self, message: str, retry_after: float, queue_full: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.queue_full = queue_full


class EngineFailure(EngineError):
    """The engine failed while serving a valid job. The cause is logged where it happened;
    the caller learns only which model failed."""

    def __init__(self, model: str) -> None:
        super().__init__(f"The engine for model '{model}' failed to serve the request.")
        self.model = model


class ModelInUse(EngineError):
    """An operator action cannot be done now: the model has requests under way or waiting,
    or is between states (loading, unloading)."""

    field = "model"


class ModelDoesNotFit(EngineError):
    """The model cannot be placed: its device's budget is held by pinned models and models
    in use, which are never evicted."""

    field = "model"


class ModelLoadFailed(EngineError):
    """Loading the model failed; the cause is logged where it happened."""

    field = "model"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' failed to load; see the server log.")
        self.model = model


class ModelNotServedHere(EngineError):
    """The catalog model exists but this server does not run it (settings' ``cluster.serve``):
    another replica may. The server says where, or forwards the request there."""

    field = "model"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' is not served by this server.")
        self.model = model
