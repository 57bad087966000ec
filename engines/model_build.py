"""Building a model folder atomically: what the demo builders share.

Each model is assembled in a hidden sibling temp folder and renamed into place, with a
marker written last; a folder whose marker names the current build version is complete.
A crash therefore leaves at most a hidden temp folder, never a half model.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MARKER = ".omniserve-built"


def is_built(path: Path, version: str) -> bool:
    marker = path / MARKER
    return marker.is_file() and marker.read_text().strip() == version


def build_atomically(target: Path, builder: Callable[[Path], None], version: str, *, force: bool = False) -> None:
    """Run ``builder`` into a temp folder and move the result to ``target``, unless a
    complete build of ``version`` is already there (or ``force``)."""
    if not force and is_built(target, version):
        return
    # Same filesystem as the target, so the final rename is atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        builder(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a server may run as another user
        (tmp / MARKER).write_text(version + "\n")  # last: means "complete"
        if not force and is_built(target, version):
            return  # another process finished it meanwhile; don't pull it from under a reader
        if target.exists():  # incomplete, outdated or forced; rename needs it gone
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished the same build first; theirs is as good.
            if not is_built(target, version):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
