from __future__ import annotations

from pathlib import Path

import pytest

from engines.base import ModelKind
from server.settings import SettingsError, load_settings


def test_defaults_without_config() -> None:
    settings = load_settings(environ={})
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.is_loopback
    assert settings.models == []


def test_toml_then_environment_overrides(tmp_path: Path) -> None:
    config = tmp_path / "omniserve.toml"
    config.write_text(
        """
port = 9000
[limits]
max_body_bytes = 1000
[[models]]
name = "chat"
kind = "chat"
path = "/models/chat"
options = { max_model_len = 512 }
"""
    )
    settings = load_settings(
        config,
        environ={
            "OMNISERVE_PORT": "9100",
            "OMNISERVE_LIMITS__MAX_QUEUE_DEPTH": "7",
            "OMNISERVE_AUTH__STATIC_KEYS": "k1,k2",
            "UNRELATED": "x",
        },
    )
    assert settings.port == 9100
    assert settings.limits.max_body_bytes == 1000
    assert settings.limits.max_queue_depth == 7
    assert settings.auth.static_keys == ["k1", "k2"]
    assert settings.models[0].kind is ModelKind.CHAT
    assert settings.models[0].options == {"max_model_len": 512}


def test_bad_values_are_rejected_with_the_field() -> None:
    with pytest.raises(SettingsError, match="port"):
        load_settings(environ={"OMNISERVE_PORT": "eighty"})
    with pytest.raises(SettingsError, match="no_such_setting"):
        load_settings(environ={"OMNISERVE_NO_SUCH_SETTING": "1"})


def test_unreadable_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read config"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_non_loopback_host() -> None:
    assert not load_settings(environ={"OMNISERVE_HOST": "0.0.0.0"}).is_loopback
