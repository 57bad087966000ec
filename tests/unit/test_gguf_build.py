"""Finding a model file inside an installed package, without importing the package."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from engines.gguf_build import packaged_file


def test_finds_a_file_beside_the_package_without_importing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "weights_pkg"
    package.mkdir()
    # Importing this package would fail: finding its file must not import it.
    (package / "__init__.py").write_text("raise ImportError('needs a runtime we do not have')\n")
    (package / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert packaged_file("weights_pkg", "model.gguf") == package / "model.gguf"
    assert "weights_pkg" not in sys.modules
    with pytest.raises(FileNotFoundError, match=r"other\.gguf"):
        packaged_file("weights_pkg", "other.gguf")


def test_a_missing_package_is_named() -> None:
    with pytest.raises(FileNotFoundError, match="no_such_weights_pkg"):
        packaged_file("no_such_weights_pkg", "model.gguf")
