"""Model references: local paths and Hugging Face ids resolved in a hub cache built locally."""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest

from engines.model_sources import (
    HubId,
    ModelSourceError,
    cached_models,
    download,
    hub_id,
    parse_hub_id,
    resolve,
    select_files,
)
from tests.hub_cache import add_to_hub_cache, record_listing


def model_folder(folder: Path, marker: str = "a") -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "marker": marker}))
    (folder / "model.safetensors").write_bytes(b"weights-" + marker.encode())
    return folder


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hub"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("org/name", HubId("org/name")),
        ("Qwen/Qwen2.5-0.5B-Instruct", HubId("Qwen/Qwen2.5-0.5B-Instruct")),
        ("org/name@v1.0", HubId("org/name", "v1.0")),
        ("org/name@refs/pr/1", HubId("org/name", "refs/pr/1")),
        ("name", None),
        ("org/name/sub", None),
        ("org/name@", None),
        ("org//name", None),
    ],
)
def test_hub_id_syntax(text: str, expected: HubId | None) -> None:
    assert parse_hub_id(text) == expected


@pytest.mark.parametrize("text", ["./org/name", "/org/name", "~/org/name", "../org/name"])
def test_path_forms_are_always_paths(text: str) -> None:
    assert hub_id(text) is None


def test_an_existing_local_path_wins_over_a_hub_id(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    local = model_folder(tmp_path / "org" / "name", "local")
    add_to_hub_cache(cache, "org/name", model_folder(tmp_path / "source", "hub"))
    assert hub_id("org/name") is None
    assert resolve("org/name", cache_dir=cache, offline=True) == Path("org/name")
    assert resolve("org/name", cache_dir=cache, offline=True).resolve() == local
    assert hub_id("org/other") == HubId("org/other")


def test_a_missing_local_path_is_an_error(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(ModelSourceError, match="no such file or folder"):
        resolve(str(tmp_path / "absent"), cache_dir=cache, offline=True)
    with pytest.raises(ModelSourceError, match="a Hugging Face id has the form org/name"):
        resolve("absent-model", cache_dir=cache, offline=True)


def test_tilde_paths_are_expanded(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    model_folder(tmp_path / "models" / "x")
    assert resolve("~/models/x", cache_dir=cache, offline=True) == tmp_path / "models" / "x"


def test_an_id_resolves_offline_to_its_cached_snapshot(tmp_path: Path, cache: Path) -> None:
    snapshot = add_to_hub_cache(cache, "org/tiny", model_folder(tmp_path / "source", "main"))
    folder = resolve("org/tiny", cache_dir=cache, offline=True)
    assert folder == snapshot
    assert (folder / "model.safetensors").read_bytes() == b"weights-main"


def test_an_id_at_a_revision_resolves_to_that_revision(tmp_path: Path, cache: Path) -> None:
    main = add_to_hub_cache(cache, "org/tiny", model_folder(tmp_path / "v2", "two"))
    tagged = add_to_hub_cache(cache, "org/tiny", model_folder(tmp_path / "v1", "one"), refs=("v1",))
    assert main != tagged
    assert resolve("org/tiny", cache_dir=cache, offline=True) == main
    assert (resolve("org/tiny@v1", cache_dir=cache, offline=True) / "model.safetensors").read_bytes() == b"weights-one"
    assert resolve(f"org/tiny@{tagged.name}", cache_dir=cache, offline=True) == tagged  # a commit hash


def test_an_unknown_id_offline_names_the_id_and_the_cache(tmp_path: Path, cache: Path) -> None:
    add_to_hub_cache(cache, "org/tiny", model_folder(tmp_path / "source"))
    with pytest.raises(ModelSourceError) as error:
        resolve("org/missing", cache_dir=cache, offline=True)
    message = str(error.value)
    assert "org/missing" in message and str(cache) in message and "HF_HUB_OFFLINE=1" in message
    with pytest.raises(ModelSourceError, match="org/tiny@v9"):
        resolve("org/tiny@v9", cache_dir=cache, offline=True)


def test_offline_a_snapshot_needs_only_the_files_a_download_takes(tmp_path: Path, cache: Path) -> None:
    snapshot = add_to_hub_cache(cache, "org/tiny", model_folder(tmp_path / "source"))
    # The repository also holds files a download leaves out: the snapshot is complete without them.
    listing = ["config.json", "model.safetensors", "pytorch_model.bin", "onnx/model.onnx"]
    record_listing(cache, "org/tiny", snapshot.name, listing)
    assert resolve("org/tiny", cache_dir=cache, offline=True) == snapshot
    # A file a download takes but the cache lacks makes the copy incomplete.
    record_listing(cache, "org/tiny", snapshot.name, [*listing, "tokenizer.json"])
    huggingface_hub._tree_cache._IN_MEMORY_TREE_CACHE.clear()
    with pytest.raises(ModelSourceError, match="incomplete"):
        resolve("org/tiny", cache_dir=cache, offline=True)


def test_online_only_the_selected_files_are_downloaded(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    repo_files = ["config.json", "model.safetensors", "pytorch_model.bin", "flax_model.msgpack", "weird[1].json"]

    def snapshot_download(repo_id: str, **kwargs: Any) -> Any:
        calls.append({"repo_id": repo_id, **kwargs})
        if kwargs.get("dry_run"):
            return [huggingface_hub.DryRunFileInfo("c" * 40, 1, name, str(cache), True, True) for name in repo_files]
        return str(cache / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert download(HubId("org/tiny", "v1"), cache) == cache / "snapshot"
    listing, fetch = calls
    assert (listing["repo_id"], listing["revision"], listing["dry_run"]) == ("org/tiny", "v1", True)
    assert (fetch["revision"], fetch["cache_dir"]) == ("v1", cache)
    allowed = [name for name in repo_files if any(glob.fnmatch.fnmatchcase(name, p) for p in fetch["allow_patterns"])]
    assert allowed == ["config.json", "model.safetensors", "weird[1].json"]


def test_online_an_unreachable_hub_falls_back_to_the_cache(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = add_to_hub_cache(cache, "org/tiny", model_folder(tmp_path / "source"))
    real = huggingface_hub.snapshot_download

    def snapshot_download(repo_id: str, **kwargs: Any) -> Any:
        if kwargs.get("local_files_only"):
            return real(repo_id, **kwargs)
        raise huggingface_hub.errors.DryRunError("unreachable") from ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert resolve("org/tiny", cache_dir=cache, offline=False) == snapshot
    with pytest.raises(ModelSourceError, match=r"could not be reached \(ConnectionError: no route to host\)"):
        resolve("org/absent", cache_dir=cache, offline=False)
    # `models pull` wants the hub: a cached copy is no success there.
    with pytest.raises(ModelSourceError, match=r"could not be reached .*; the cache holds an earlier copy at"):
        download(HubId("org/tiny"), cache, cached_when_unreachable=False)


@pytest.mark.parametrize(
    ("repo", "kept"),
    [
        (  # a transformers repository with every framework's weights
            [
                "config.json",
                "model.safetensors",
                "pytorch_model.bin",
                "tf_model.h5",
                "flax_model.msgpack",
                "rust_model.ot",
                "onnx/model.onnx",
                "openvino/openvino_model.bin",
                "model.gguf",
                "tokenizer.json",
            ],
            ["config.json", "model.safetensors", "tokenizer.json"],
        ),
        (  # sharded: the safetensors shards and index, not the pickled ones
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json",
                "pytorch_model-00001-of-00002.bin",
                "pytorch_model.bin.index.json",
            ],
            ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"],
        ),
        (  # only pickled weights: kept
            ["config.json", "pytorch_model.bin"],
            ["config.json", "pytorch_model.bin"],
        ),
        (  # a CTranslate2 Whisper and a Coqui model keep their own formats
            ["config.json", "model.bin", "vocabulary.txt", "model.pth", "speakers_xtts.pth"],
            ["config.json", "model.bin", "vocabulary.txt", "model.pth", "speakers_xtts.pth"],
        ),
        (  # a diffusers pipeline: components at full precision, no top-level one-file checkpoints
            [
                "model_index.json",
                "v1-5-pruned.ckpt",
                "v1-5-pruned-emaonly.safetensors",
                "unet/config.json",
                "unet/diffusion_pytorch_model.safetensors",
                "unet/diffusion_pytorch_model.bin",
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "unet/diffusion_pytorch_model.non_ema.bin",
                "vae/diffusion_pytorch_model.safetensors",
                "text_encoder/model.safetensors",
                "text_encoder/model.fp16.safetensors",
            ],
            [
                "model_index.json",
                "unet/config.json",
                "unet/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.safetensors",
                "text_encoder/model.safetensors",
            ],
        ),
        (  # a pipeline published only in fp16 keeps its variant files
            ["model_index.json", "unet/diffusion_pytorch_model.fp16.safetensors"],
            ["model_index.json", "unet/diffusion_pytorch_model.fp16.safetensors"],
        ),
    ],
)
def test_select_files(repo: list[str], kept: list[str]) -> None:
    assert select_files(repo) == kept


def test_cached_models_lists_ids_sizes_and_refs(tmp_path: Path, cache: Path) -> None:
    assert cached_models(cache) == []
    snapshot = add_to_hub_cache(cache, "org/tiny", model_folder(tmp_path / "a"), refs=("main", "v1"))
    add_to_hub_cache(cache, "acme/other", model_folder(tmp_path / "b"))
    models = cached_models(cache)
    assert [m.repo_id for m in models] == ["acme/other", "org/tiny"]
    tiny = models[1]
    assert tiny.refs == ["main", "v1"] and tiny.snapshot == snapshot
    on_disk = sum(f.stat().st_size for f in (tmp_path / "a").iterdir())
    assert tiny.size_bytes == on_disk
