"""The catalog `omniserve serve` starts with: the configured entries (`[[models]]`) and the models
named on the command line (`--model`), or, when there are neither, the built-in demo catalog.

A `--model` is `[NAME=]ID_OR_PATH`: a local folder (or weights file) or a Hugging Face id
(`org/name[@revision]`), served under NAME, else under the argument exactly as given. Its kind,
engine and options are read from its own files (engines/model_files.py); `--model-kind NAME=KIND`
names the kind where the files cannot. Hub ids, in `--model` and in a configured entry's `path`,
resolve to snapshot folders in the hub cache (engines/model_sources.py).

Everything here runs before the server takes the data lock, binds its port or loads a model: a
catalog that cannot be served stops the start with a `CatalogStartError` naming the model.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import msgspec

from engines.base import ModelKind, ModelSpec
from engines.model_files import UnrecognizedModel, infer_model
from engines.model_sources import ModelSourceError, resolve
from server.settings import Settings

log = logging.getLogger("omniserve.catalog")

# A served name given before "=": no path separator, so `./a=b` and `/x=y` stay paths.
_SERVED_NAME = re.compile(r"^[A-Za-z0-9][\w.:-]*$")


class CatalogStartError(Exception):
    """A catalog that cannot be served; the message names the model and what is wrong."""


class ModelArgument(msgspec.Struct, frozen=True):
    name: str
    reference: str  # a local path or a hub id
    given: str  # the argument as typed, for messages


def parse_model_argument(text: str) -> ModelArgument:
    """`[NAME=]ID_OR_PATH`."""
    name, sep, reference = text.partition("=")
    if sep and _SERVED_NAME.match(name):
        if not reference:
            raise CatalogStartError(f"--model {text}: nothing after '='")
        return ModelArgument(name=name, reference=reference, given=text)
    if not text:
        raise CatalogStartError("--model needs a Hugging Face id or a local path")
    return ModelArgument(name=text, reference=text, given=text)


def parse_kind_argument(text: str) -> tuple[str, ModelKind]:
    """`NAME=KIND`."""
    name, _, kind = text.rpartition("=")
    try:
        if not name:
            raise ValueError(text)
        return name, ModelKind(kind)
    except ValueError:
        kinds = ", ".join(k.value for k in ModelKind)
        raise CatalogStartError(f"--model-kind {text}: expected NAME=KIND with KIND one of {kinds}") from None


def startup_catalog(settings: Settings, models: list[str], kinds: list[str]) -> list[ModelSpec]:
    """The specs to serve (see the module docstring). Cheap checks (names, kinds) come before any
    download, so a typo costs no time."""
    arguments = [parse_model_argument(text) for text in models]
    overrides = dict(parse_kind_argument(text) for text in kinds)
    _check_unique(settings.models, arguments)
    unknown = sorted(overrides.keys() - {argument.name for argument in arguments})
    if unknown:
        raise CatalogStartError(f"--model-kind names no --model: {', '.join(unknown)}")
    if not settings.models and not arguments:
        return demo_catalog(settings)
    specs = [_configured(spec) for spec in settings.models]
    specs += [_served(argument, overrides.get(argument.name)) for argument in arguments]
    return specs


def demo_catalog(settings: Settings) -> list[ModelSpec]:
    """The built-in demo models, built under the data dir when missing."""
    from engines.audio.demo import build_audio_demo_models
    from engines.demo import build_demo_models
    from engines.image.demo import build_image_demo_models
    from engines.video.demo import build_video_demo_models
    from engines.vision_demo import build_vision_demo_models

    root = settings.data_path / "models" / "demo"
    return [
        *build_demo_models(root),
        *build_image_demo_models(root),
        *build_audio_demo_models(root),
        *build_video_demo_models(root),
        *build_vision_demo_models(root),
    ]


def _check_unique(configured: list[ModelSpec], arguments: list[ModelArgument]) -> None:
    owners: dict[str, str] = {}
    named = [(spec.name, f"[[models]] entry {spec.name!r}") for spec in configured]
    named += [(alias, f"an alias of [[models]] entry {spec.name!r}") for spec in configured for alias in spec.aliases]
    named += [(argument.name, f"--model {argument.given}") for argument in arguments]
    for name, owner in named:
        if name in owners:
            raise CatalogStartError(f"the model name {name!r} is used twice: by {owners[name]} and by {owner}")
        owners[name] = owner


def _configured(spec: ModelSpec) -> ModelSpec:
    try:
        path = resolve(spec.path)
    except ModelSourceError as exc:
        raise CatalogStartError(f"model {spec.name}: {exc}") from None
    return spec if str(path) == spec.path else msgspec.structs.replace(spec, path=str(path))


def _served(argument: ModelArgument, kind: ModelKind | None) -> ModelSpec:
    try:
        path = resolve(argument.reference)
        inferred = infer_model(Path(path), kind)
    except (ModelSourceError, UnrecognizedModel) as exc:
        raise CatalogStartError(f"--model {argument.given}: {exc}") from None
    log.info(
        "model %s: %s on %s (%s) from %s", argument.name, inferred.kind.value, inferred.engine, inferred.evidence, path
    )
    return ModelSpec(
        name=argument.name,
        kind=inferred.kind,
        engine=inferred.engine,
        path=str(path),
        options=dict(inferred.options),
        tool_parser=inferred.tool_parser,
    )
