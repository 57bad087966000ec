"""How many bytes a model's weights take, read from its files before anything loads.

The scheduler plans an undeclared model's footprint from this (engines/sizing.py). Only the
files a library would load count: one format per folder (safetensors before PyTorch pickles,
as transformers, diffusers and vLLM choose), the shards an index names, the catalog's
`variant` where it has one, and for a diffusers pipeline the component folders its
model_index.json lists. safetensors headers give each tensor's dtype, so weights stored in
16 bits and computed in float32 (diffusers on CPU) count at their width in memory.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger("omniserve.weights")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# Files with weight suffixes that trainers leave beside a checkpoint; never loaded for inference.
_NOT_WEIGHTS = frozenset({"training_args.bin", "optimizer.pt", "optimizer.bin", "scheduler.pt"})
# Bytes per element of safetensors' floating dtypes: what a compute dtype can widen or narrow.
_FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
# A safetensors header larger than this is not one (the format caps it at 100 MB).
_MAX_HEADER_BYTES = 100_000_000


def local_folder(path: str) -> Path | None:
    """The model's folder or file on this machine: the path itself, or a hub id already in
    the local hub cache (what vLLM and transformers resolve offline); None when neither."""
    local = Path(path).expanduser()
    if local.exists():
        return local
    if path.count("/") != 1 or path.startswith(("/", ".", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=True))
    except Exception:
        return None


def _variant(file: Path) -> str | None:
    """`fp16` for model.fp16.safetensors and model.fp16-00001-of-00002.safetensors."""
    parts = file.name.split(".")
    if len(parts) < 3:
        return None
    return parts[-2].split("-")[0]


def weight_files(folder: Path, variant: str | None = None) -> list[Path]:
    """The weight files a library loads from one folder (not its subfolders)."""
    if folder.is_file():  # a single-file checkpoint (diffusers .safetensors, a GGUF for vLLM)
        return [folder]
    if not folder.is_dir():
        return []
    files = [f for f in folder.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES and f.name not in _NOT_WEIGHTS]
    # A requested variant where the folder has it, else the plain files (diffusers' fallback).
    chosen = [f for f in files if _variant(f) == variant] or [f for f in files if _variant(f) is None]
    safetensors = [f for f in chosen if f.suffix == ".safetensors"]
    chosen = safetensors or chosen
    named = _indexed(folder, chosen)
    return sorted(named if named is not None else chosen)


def _indexed(folder: Path, files: list[Path]) -> list[Path] | None:
    """The shards an index (`*.safetensors.index.json`) maps weights to, when one covers
    `files`: folders such as Mistral's also hold a consolidated copy nobody loads."""
    names = {f.name for f in files}
    for index in folder.glob("*.index.json"):
        try:
            weight_map = json.loads(index.read_text()).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            continue
        shards = set(weight_map.values()) if isinstance(weight_map, dict) else set()
        if shards and shards <= names:
            return [folder / name for name in shards]
    return None


def _safetensors_bytes(file: Path, float_bytes: int | None) -> int:
    """The tensors of one safetensors file in memory, floating ones at `float_bytes` each
    (None: as stored); the file's size when its header cannot be read."""
    size = file.stat().st_size
    try:
        with file.open("rb") as stream:
            length = int.from_bytes(stream.read(8), "little")
            if not 0 < length <= _MAX_HEADER_BYTES:
                return size
            header: dict[str, Any] = json.loads(stream.read(length))
    except (OSError, ValueError):
        return size
    total = 0
    for name, tensor in header.items():
        if name == "__metadata__" or not isinstance(tensor, dict):
            continue
        start, end = tensor.get("data_offsets", (0, 0))
        floating = str(tensor.get("dtype")) in _FLOAT_BYTES
        if float_bytes is None or not floating:  # as stored; integers, quantized blocks: kept so
            total += end - start
        else:
            total += math.prod(tensor.get("shape", ())) * float_bytes
    return total


def files_bytes(files: list[Path], float_bytes: int | None = None) -> int:
    """Bytes of `files` in memory: safetensors at `float_bytes` per floating element (None:
    as stored), other formats (pickles, CTranslate2) as stored."""
    return sum(_safetensors_bytes(f, float_bytes) if f.suffix == ".safetensors" else f.stat().st_size for f in files)


def pipeline_components(folder: Path) -> list[Path]:
    """A diffusers pipeline's component folders (unet, vae, text encoders...), as its
    model_index.json lists them; tokenizers and schedulers hold no weights and match none."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        log.debug("no readable model_index.json in %s", folder)
        return []
    components = [
        name
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[1] is not None
    ]
    return [folder / name for name in components if (folder / name).is_dir()]


def model_weight_bytes(folder: Path, *, variant: str | None = None, float_bytes: int | None = None) -> int:
    """A model folder's weights in memory (see `files_bytes`)."""
    return files_bytes(weight_files(folder, variant), float_bytes)


def pipeline_weight_bytes(path: Path, *, variant: str | None = None, float_bytes: int | None = None) -> int:
    """A diffusers pipeline's weights in memory: each component folder's, or the one file of
    a single-file checkpoint."""
    if path.is_file():
        return files_bytes(weight_files(path), float_bytes)
    return sum(
        model_weight_bytes(component, variant=variant, float_bytes=float_bytes)
        for component in pipeline_components(path)
    )
