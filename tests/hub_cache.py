"""Hugging Face hub caches built locally, for tests that resolve hub ids without a network.

huggingface_hub's cache layout (what `snapshot_download` writes and reads):
`<cache>/models--ORG--NAME/blobs/<hash>` holds each file's content once,
`snapshots/<commit>/<path>` links to the blob, and `refs/<branch>` holds the commit a branch
points at.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path


def repo_folder(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / ("models--" + repo_id.replace("/", "--"))


def add_to_hub_cache(cache_dir: Path, repo_id: str, source: Path, *, refs: tuple[str, ...] = ("main",)) -> Path:
    """Lay the files under `source` out in `cache_dir` as a download of `repo_id` would, at a commit
    derived from their content, with `refs` pointing at it; the snapshot folder."""
    files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
    digest = hashlib.sha1()
    for file in files:
        digest.update(str(file.relative_to(source)).encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    commit = digest.hexdigest()
    repo = repo_folder(cache_dir, repo_id)
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    for file in files:
        blob = blobs / hashlib.sha256(file.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def record_listing(cache_dir: Path, repo_id: str, commit: str, paths: list[str]) -> None:
    """The repository's file listing at `commit`, as `snapshot_download` caches it when it downloads
    (`trees/<commit>.json`): offline, a snapshot missing a listed file it was asked for is incomplete."""
    files = {path: {"size": 1, "blob_id": hashlib.sha1(path.encode()).hexdigest()} for path in sorted(paths)}
    trees = repo_folder(cache_dir, repo_id) / "trees"
    trees.mkdir(parents=True, exist_ok=True)
    (trees / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": files}))
