"""The catalog `omniserve serve` starts with: --model arguments, configured entries, the demo."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from huggingface_hub import constants as hub_constants

from engines.base import ModelKind, ModelSpec
from server.cli import main
from server.data_lock import LOCK_NAME
from server.settings import Settings
from server.startup_catalog import CatalogStartError, ModelArgument, parse_model_argument, startup_catalog
from tests.hub_cache import add_to_hub_cache


def chat_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "chat_template.jinja").write_text("{{ '<tool_call>' }}")
    return folder


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The hub cache huggingface_hub uses (it reads HF_HUB_CACHE once, at import), offline."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache


def settings(tmp_path: Path, models: list[ModelSpec] | None = None) -> Settings:
    return msgspec.convert({"data_dir": str(tmp_path / "data"), "models": models or []}, Settings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("org/name", ModelArgument(name="org/name", reference="org/name", given="org/name")),
        ("org/name@v1", ModelArgument(name="org/name@v1", reference="org/name@v1", given="org/name@v1")),
        ("mine=org/name", ModelArgument(name="mine", reference="org/name", given="mine=org/name")),
        ("mine=/m/x=y", ModelArgument(name="mine", reference="/m/x=y", given="mine=/m/x=y")),
        ("./a=b", ModelArgument(name="./a=b", reference="./a=b", given="./a=b")),
        ("/models/a=b", ModelArgument(name="/models/a=b", reference="/models/a=b", given="/models/a=b")),
    ],
)
def test_model_arguments(text: str, expected: ModelArgument) -> None:
    assert parse_model_argument(text) == expected


def test_models_are_served_under_their_names_with_inferred_kinds(tmp_path: Path, cache: Path) -> None:
    snapshot = add_to_hub_cache(cache, "org/tiny-chat", chat_folder(tmp_path / "source"))
    local = chat_folder(tmp_path / "local")
    specs = startup_catalog(settings(tmp_path), ["org/tiny-chat", f"mine={local}"], [])
    assert [(s.name, s.kind, s.engine, s.path) for s in specs] == [
        ("org/tiny-chat", ModelKind.CHAT, "vllm", str(snapshot)),
        ("mine", ModelKind.CHAT, "vllm", str(local)),
    ]
    assert {s.tool_parser for s in specs} == {"hermes"}


def test_model_arguments_join_the_configured_models_and_the_demo_is_not_served(tmp_path: Path, cache: Path) -> None:
    snapshot = add_to_hub_cache(cache, "org/embed", chat_folder(tmp_path / "source"), refs=("v2",))
    configured = ModelSpec(name="configured", kind=ModelKind.EMBEDDING, path="org/embed@v2", aliases=["c"])
    local = chat_folder(tmp_path / "local")
    specs = startup_catalog(settings(tmp_path, [configured]), [f"mine={local}"], ["mine=rerank"])
    assert [(s.name, s.kind, s.path) for s in specs] == [
        ("configured", ModelKind.EMBEDDING, str(snapshot)),  # a hub id in a catalog path resolves too
        ("mine", ModelKind.RERANK, str(local)),
    ]
    assert specs[1].options == {"runner": "pooling"} and specs[0].aliases == ["c"]
    assert not (tmp_path / "data" / "models" / "demo").exists()


def test_without_models_the_demo_is_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo = [ModelSpec(name="demo-x", kind=ModelKind.CHAT, path="/x")]
    monkeypatch.setattr("server.startup_catalog.demo_catalog", lambda _settings: demo)
    assert startup_catalog(settings(tmp_path), [], []) == demo


@pytest.mark.parametrize(
    ("models", "kinds", "configured", "message"),
    [
        (["a=./x", "a=./y"], [], [], "'a' is used twice: by --model a=./x and by --model a=./y"),
        (["c=./x"], [], ["configured"], "'c' is used twice: by an alias of [[models]] entry 'configured'"),
        (["configured=./x"], [], ["configured"], "by [[models]] entry 'configured' and by --model configured"),
        (["a=./x"], ["b=chat"], [], "--model-kind names no --model: b"),
        (["a=./x"], ["a=talk"], [], "--model-kind a=talk: expected NAME=KIND with KIND one of chat, embedding"),
        (["a=./x"], ["chat"], [], "--model-kind chat: expected NAME=KIND"),
        (["a="], [], [], "--model a=: nothing after '='"),
    ],
)
def test_argument_mistakes_stop_the_start_before_any_download(
    tmp_path: Path, cache: Path, models: list[str], kinds: list[str], configured: list[str], message: str
) -> None:
    entries = [
        ModelSpec(name=name, kind=ModelKind.CHAT, path="org/never-resolved", aliases=["c"]) for name in configured
    ]
    with pytest.raises(CatalogStartError) as error:
        startup_catalog(settings(tmp_path, entries), models, kinds)
    assert message in str(error.value)


def test_a_configured_path_that_is_missing_stops_the_start(tmp_path: Path, cache: Path) -> None:
    entry = ModelSpec(name="gone", kind=ModelKind.CHAT, path=str(tmp_path / "gone"))
    with pytest.raises(CatalogStartError, match=r"model gone: .*gone: no such file or folder"):
        startup_catalog(settings(tmp_path, [entry]), [], [])


def test_a_configured_hub_id_missing_offline_stops_the_start(tmp_path: Path, cache: Path) -> None:
    entry = ModelSpec(name="big", kind=ModelKind.CHAT, path="org/absent@v2")
    with pytest.raises(CatalogStartError) as error:
        startup_catalog(settings(tmp_path, [entry]), [], [])
    assert str(error.value).startswith(
        f"model big: org/absent@v2: not a local path, and not in the Hugging Face cache at {cache}"
    )


def test_serve_exits_2_for_an_unknown_id_offline_before_taking_the_data_dir(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMNISERVE_DATA_DIR", str(tmp_path / "data"))
    assert main(["serve", "--model", "org/unknown"]) == 2
    err = capsys.readouterr().err
    assert "--model org/unknown: org/unknown: not a local path, and not in the Hugging Face cache at" in err
    assert str(cache) in err
    assert not (tmp_path / "data" / LOCK_NAME).exists()


def test_serve_exits_2_for_an_unclassifiable_folder_naming_what_it_found(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMNISERVE_DATA_DIR", str(tmp_path / "data"))
    folder = tmp_path / "mystery"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"")
    (folder / "notes.txt").write_text("")
    assert main(["serve", "--model", f"m={folder}"]) == 2
    assert "no config.json or model_index.json; found notes.txt, weights.bin" in capsys.readouterr().err
    assert not (tmp_path / "data" / LOCK_NAME).exists()


def test_models_list_shows_the_catalog_and_the_cache(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    add_to_hub_cache(cache, "org/tiny-chat", chat_folder(tmp_path / "source"))
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "data.txt").write_text("x" * 2048)
    add_to_hub_cache(cache, "org/data", unknown)
    config = tmp_path / "omniserve.toml"
    config.write_text('[[models]]\nname = "big"\nkind = "image"\nengine = "diffusers"\npath = "/models/big"\n')
    monkeypatch.setenv("OMNISERVE_CONFIG", str(config))
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "configured models:"
    assert lines[1].split() == ["big", "image", "diffusers", "/models/big"]
    assert lines[2] == f"Hugging Face cache at {cache}:"
    assert lines[3].split() == ["org/data", "2.0", "KiB", "unclassified", "refs:", "main"]
    assert lines[4].split()[0] == "org/tiny-chat" and lines[4].split()[3] == "chat"


def test_models_pull_refuses_offline(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "pull", "org/tiny-chat@v1"]) == 2
    assert "org/tiny-chat@v1: cannot download with HF_HUB_OFFLINE=1" in capsys.readouterr().err
    assert main(["models", "pull", "./local"]) == 2
    assert "not a Hugging Face id" in capsys.readouterr().err
