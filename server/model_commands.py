"""`omniserve models list | pull`: what the catalog names and what the Hugging Face cache holds."""

from __future__ import annotations

import sys
from pathlib import Path

from engines.model_files import UnrecognizedModel, infer_model
from engines.model_sources import (
    HubId,
    ModelSourceError,
    cached_models,
    download,
    hub_cache_dir,
    hub_offline,
    parse_hub_id,
)
from server.settings import Settings


def cmd_models_list(settings: Settings) -> int:
    if settings.models:
        print("configured models:")
        for spec in settings.models:
            aliases = f"  (also {', '.join(spec.aliases)})" if spec.aliases else ""
            print(f"  {spec.name:<28} {spec.kind.value:<13} {spec.engine:<14} {spec.path}{aliases}")
    else:
        print("configured models: none (`omniserve serve` serves the demo catalog, or the --model arguments)")
    cache = hub_cache_dir()
    models = cached_models(cache)
    print(f"Hugging Face cache at {cache}:" if models else f"Hugging Face cache at {cache}: no models")
    for model in models:
        refs = ",".join(model.refs) or "-"
        print(f"  {model.repo_id:<40} {_size(model.size_bytes):>9}  {_kind(model.snapshot):<13} refs: {refs}")
    return 0


def cmd_models_pull(reference: str) -> int:
    ref = parse_hub_id(reference)
    if ref is None:
        print(f"{reference}: not a Hugging Face id (org/name[@revision])", file=sys.stderr)
        return 2
    cache = hub_cache_dir()
    if hub_offline():
        print(
            f"{ref}: cannot download with HF_HUB_OFFLINE=1 (the hub may not be asked); unset it to pull"
            + _cached_note(ref),
            file=sys.stderr,
        )
        return 2
    try:
        folder = download(ref, cache, cached_when_unreachable=False)
    except ModelSourceError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{ref}: {_kind(folder)} model at {folder}")
    return 0


def _cached_note(ref: HubId) -> str:
    cached = next((m for m in cached_models(hub_cache_dir()) if m.repo_id == ref.repo_id), None)
    return f" ({ref.repo_id} is already in the cache)" if cached else ""


def _kind(folder: Path | None) -> str:
    """The kind `--model` would serve a cached snapshot as, or "unclassified"."""
    if folder is None:
        return "-"
    try:
        inferred = infer_model(folder)
    except UnrecognizedModel:
        return "unclassified"
    return inferred.kind.value


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
