"""Where a model's files come from: a local path, or a Hugging Face Hub id resolved into the hub's
standard cache (HF_HOME / HF_HUB_CACHE), shared with every other tool that uses huggingface_hub.

A reference is a hub id when it has the form `org/name` (optionally `@revision`: a branch, tag or
commit) and names no existing local path; `/x`, `./x`, `../x` and `~/x` are always paths. Online, a
hub id is downloaded (or brought up to date) with huggingface_hub's progress bar; with
HF_HUB_OFFLINE=1 it must already be in the cache, and nothing is asked of the network.

A download takes only the files omniserve's engines read: not other frameworks' formats (ONNX,
GGUF, TensorFlow, Flax, OpenVINO, Core ML), not PyTorch `.bin` copies of weights the repository
also has as safetensors, not a diffusers pipeline's precision variants (`.fp16.`) beside the
full-precision files, and not the single-file checkpoints some pipeline repositories carry at
their top level beside the component folders. Stable Diffusion 1.5's repository holds over 40 GB;
what its pipeline loads is about 5.
"""

from __future__ import annotations

import glob
import logging
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import msgspec

log = logging.getLogger("omniserve.models")

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[^\s@/][^\s@]*))?$")
_PATH_PREFIXES = ("/", "./", "../", "~")

# Formats of other frameworks: never loaded by omniserve's engines.
_FOREIGN_SUFFIXES = frozenset({".onnx", ".onnx_data", ".gguf", ".msgpack", ".h5", ".tflite", ".ot", ".mlmodel"})
_FOREIGN_FOLDERS = frozenset({"onnx", "openvino", "coreml", "flax", "tf", "gguf"})
_FOREIGN_PREFIXES = ("openvino_", "tf_model", "flax_model", "rust_model")
_WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".ckpt", ".pt", ".pth"})
# transformers' and diffusers' PyTorch weight names: duplicates where safetensors exist.
_PICKLED_WEIGHTS = re.compile(r"^(diffusion_)?pytorch_model[.-]")
# diffusers' precision and EMA variants: "diffusion_pytorch_model.fp16.safetensors".
_VARIANT = re.compile(r"\.(fp16|fp32|bf16|non_ema|ema|ema_only)([.-])")


class ModelSourceError(Exception):
    """A model reference that resolves to no files; the message names what was looked for and where."""


class HubId(msgspec.Struct, frozen=True):
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id if self.revision is None else f"{self.repo_id}@{self.revision}"


class CachedModel(msgspec.Struct, frozen=True, kw_only=True):
    """One model repository in the hub cache, at the revision a plain id would resolve to."""

    repo_id: str
    size_bytes: int
    refs: list[str]
    snapshot: Path | None  # None: no revision is referenced by main, nor any cached


def hub_cache_dir() -> Path:
    """The hub cache huggingface_hub uses: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) forbids asking the hub anything."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def hub_id(reference: str) -> HubId | None:
    """`reference` as a hub id, or None when it names a local path (see the module docstring)."""
    if reference.startswith(_PATH_PREFIXES) or Path(reference).expanduser().exists():
        return None
    return parse_hub_id(reference)


def parse_hub_id(text: str) -> HubId | None:
    """`org/name[@revision]` as a HubId; None when `text` has another form."""
    match = _HUB_ID.match(text)
    return None if match is None else HubId(match["repo"], match["revision"])


def resolve(reference: str, *, cache_dir: Path | None = None, offline: bool | None = None) -> Path:
    """The local file or folder `reference` names: the path itself, or a hub id's snapshot folder
    in the cache (downloaded first when online)."""
    ref = hub_id(reference)
    if ref is None:
        path = Path(reference).expanduser()
        if not path.exists():
            hint = "" if "/" in reference else " (a Hugging Face id has the form org/name)"
            raise ModelSourceError(f"{reference}: no such file or folder{hint}")
        return path
    cache = hub_cache_dir() if cache_dir is None else cache_dir
    if hub_offline() if offline is None else offline:
        return cached_snapshot(ref, cache)
    return download(ref, cache)


def cached_snapshot(ref: HubId, cache_dir: Path) -> Path:
    """The snapshot folder of `ref` in the cache, without the network."""
    from huggingface_hub import get_cached_repo_tree, snapshot_download
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        # A download cached the repository's listing: the snapshot is complete when every file
        # omniserve takes from it is there (not every file the repository has).
        listing = get_cached_repo_tree(ref.repo_id, revision=ref.revision, cache_dir=cache_dir)
        allow: list[str] | None = _exact_patterns(select_files(f.path for f in listing))
    except CachedRepoTreeNotFoundError:
        allow = None  # copied in some other way: the snapshot folder is taken as it is
    try:
        folder = snapshot_download(
            ref.repo_id, revision=ref.revision, cache_dir=cache_dir, local_files_only=True, allow_patterns=allow
        )
    except IncompleteSnapshotError as exc:
        raise ModelSourceError(
            f"{ref}: the copy in the Hugging Face cache at {cache_dir} is incomplete ({exc}); "
            f"run `omniserve models pull {ref}` where the hub is reachable"
        ) from None
    except LocalEntryNotFoundError:
        raise ModelSourceError(
            f"{ref}: not a local path, and not in the Hugging Face cache at {cache_dir}; offline "
            f"(HF_HUB_OFFLINE=1) nothing is downloaded: run `omniserve models pull {ref}` where the hub is "
            "reachable, or point HF_HOME at a cache that holds it"
        ) from None
    return Path(folder)


def download(ref: HubId, cache_dir: Path, *, cached_when_unreachable: bool = True) -> Path:
    """`ref`'s snapshot in the cache, downloading what is missing (the files `select_files` keeps).
    When the hub cannot be reached, the cached copy serves if `cached_when_unreachable`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import DryRunError, GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        try:
            listing = snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=cache_dir, dry_run=True)
        except DryRunError as exc:
            # A dry run wraps what stopped the listing (a missing repository, a refused token, no
            # connection); the cause says which.
            raise exc.__cause__ or exc from None
        allow = _exact_patterns(select_files(entry.filename for entry in listing))
        return Path(snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=cache_dir, allow_patterns=allow))
    except GatedRepoError:
        raise ModelSourceError(
            f"{ref}: a gated model; accept its terms on the Hugging Face Hub, then set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise ModelSourceError(f"{ref}: no such model on the Hugging Face Hub (a private one needs HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise ModelSourceError(f"{ref}: the model has no revision {ref.revision!r}") from None
    except Exception as exc:
        unreachable = f"{ref}: the Hugging Face Hub could not be reached ({exc.__class__.__name__}: {exc})"
        try:
            folder = cached_snapshot(ref, cache_dir)
        except ModelSourceError:
            raise ModelSourceError(f"{unreachable}, and the cache at {cache_dir} does not hold it") from None
        if not cached_when_unreachable:
            raise ModelSourceError(f"{unreachable}; the cache holds an earlier copy at {folder}") from None
        log.warning("%s; serving the cached copy at %s", unreachable, folder)
        return folder


def select_files(paths: Iterable[str]) -> list[str]:
    """The files of a repository that a download takes (see the module docstring)."""
    files = [PurePosixPath(p) for p in paths]
    pipeline = PurePosixPath("model_index.json") in files
    by_folder: dict[PurePosixPath, set[str]] = {}
    for file in files:
        by_folder.setdefault(file.parent, set()).add(file.name)
    kept = []
    for file in files:
        siblings = by_folder[file.parent]
        if _foreign(file):
            continue
        if pipeline and file.parent == PurePosixPath(".") and file.suffix in _WEIGHT_SUFFIXES:
            continue  # a one-file checkpoint beside the pipeline's component folders
        if (
            _PICKLED_WEIGHTS.match(file.name)
            and ".safetensors" not in file.name
            and any(name.endswith(".safetensors") for name in siblings)
        ):
            continue
        if _VARIANT.search(file.name) and any(_is_weight(name) and not _VARIANT.search(name) for name in siblings):
            continue
        kept.append(str(file))
    return kept


def cached_models(cache_dir: Path) -> list[CachedModel]:
    """The model repositories in the hub cache, by id."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []
    models = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        main = repo.refs.get("main")
        latest = max(repo.revisions, key=lambda r: r.last_modified, default=None)
        revision = main or latest
        models.append(
            CachedModel(
                repo_id=repo.repo_id,
                size_bytes=repo.size_on_disk,
                refs=sorted(repo.refs),
                snapshot=None if revision is None else revision.snapshot_path,
            )
        )
    return models


def _foreign(file: PurePosixPath) -> bool:
    return (
        file.suffix in _FOREIGN_SUFFIXES
        or any(part in _FOREIGN_FOLDERS for part in file.parts[:-1])
        or file.name.startswith(_FOREIGN_PREFIXES)
    )


def _is_weight(name: str) -> bool:
    return PurePosixPath(name).suffix in _WEIGHT_SUFFIXES


def _exact_patterns(paths: list[str]) -> list[str]:
    """huggingface_hub filters with fnmatch: escaped, each path matches only itself."""
    return [glob.escape(path) for path in paths]
