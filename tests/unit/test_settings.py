from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.base import ModelKind
from server import settings_loading as settings_module
from server.settings_loading import SettingsError, is_setting_path, load_settings


@pytest.fixture(autouse=True)
def fresh_warnings() -> Iterator[None]:
    """Each test sees its own once-only warnings."""
    settings_module._reported.clear()
    yield
    settings_module._reported.clear()


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
    with pytest.raises(SettingsError, match="max_body_bytes"):
        load_settings(environ={"OMNISERVE_LIMITS__MAX_BODY_BYTES": "lots"})
    with pytest.raises(SettingsError, match="max_running_per_model"):
        load_settings(environ={"OMNISERVE_LIMITS__MAX_RUNNING_PER_MODEL": "0"})
    with pytest.raises(SettingsError, match="max_queue_depth"):
        load_settings(environ={"OMNISERVE_LIMITS__MAX_QUEUE_DEPTH": "-1"})
    with pytest.raises(SettingsError, match="must not be negative"):
        load_settings(environ={"OMNISERVE_ACCOUNTS__WINDOWS__OPENAI__REQUESTS_PER_HOUR": "-1"})


def test_unreadable_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read config"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_non_loopback_host() -> None:
    assert not load_settings(environ={"OMNISERVE_HOST": "0.0.0.0"}).is_loopback


# What Kubernetes injects into every pod of a namespace holding a Service named "omniserve".
SERVICE_LINKS = {
    "OMNISERVE_PORT": "tcp://10.0.0.1:8000",
    "OMNISERVE_SERVICE_HOST": "10.0.0.1",
    "OMNISERVE_SERVICE_PORT": "8000",
    "OMNISERVE_SERVICE_PORT_HTTP": "8000",
    "OMNISERVE_PORT_8000_TCP": "tcp://10.0.0.1:8000",
    "OMNISERVE_PORT_8000_TCP_PROTO": "tcp",
    "OMNISERVE_PORT_8000_TCP_PORT": "8000",
    "OMNISERVE_PORT_8000_TCP_ADDR": "10.0.0.1",
}


def test_kubernetes_service_links_are_ignored_with_one_warning_each(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="omniserve.settings"):
        settings = load_settings(environ={**SERVICE_LINKS, "OMNISERVE_LOG_LEVEL": "debug"})
        load_settings(environ=SERVICE_LINKS)  # a second load does not repeat the warnings
    assert settings.port == 8000 and settings.log_level == "debug"
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == len(SERVICE_LINKS)
    for name in SERVICE_LINKS:
        assert sum(name + ":" in message for message in messages) == 1
    # Names only: a variable's value may be a secret.
    assert not any("10.0.0.1" in message for message in messages)


def test_unknown_variables_never_stop_loading(caplog: pytest.LogCaptureFixture) -> None:
    environ = {
        "OMNISERVE_NO_SUCH_SETTING": "1",
        "OMNISERVE_LIMITS": "a section, not a setting",
        "OMNISERVE_PORT__DEEPER": "1",
        "OMNISERVE_LIMITS__NO_SUCH_LIMIT": "1",
        "OMNISERVE_CONFIG_FILE": "/nowhere",
    }
    with caplog.at_level(logging.WARNING, logger="omniserve.settings"):
        settings = load_settings(environ=environ)
    assert settings.limits.max_body_bytes == 10 * 1024 * 1024
    assert {record.getMessage().split(":")[0] for record in caplog.records} == {f"ignoring {n}" for n in environ}


def test_setting_paths_follow_the_settings_types() -> None:
    assert is_setting_path(["port"])
    assert is_setting_path(["accounts", "windows", "novassium", "requests_per_day"])
    assert is_setting_path(["auth", "static_keys"])
    assert not is_setting_path(["accounts", "windows"])  # a section
    assert not is_setting_path(["port", "8000", "tcp"])
    assert not is_setting_path(["service", "host"])


def test_a_port_that_is_no_service_link_is_still_an_error() -> None:
    with pytest.raises(SettingsError, match="port"):
        load_settings(environ={"OMNISERVE_PORT": "http://10.0.0.1:8000"})
    assert load_settings(environ={"OMNISERVE_PORT": "udp://10.0.0.1:53"}).port == 8000


def test_secrets_from_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t value\n")
    keys = tmp_path / "keys"
    keys.write_text("k1,k2\n")
    settings = load_settings(
        environ={
            "OMNISERVE_S3__ACCESS_KEY_ID": "AKIA",
            "OMNISERVE_S3__SECRET_ACCESS_KEY_FILE": str(secret),
            "OMNISERVE_AUTH__STATIC_KEYS_FILE": str(keys),
        }
    )
    assert settings.s3.secret_access_key == "s3cr3t value"
    assert settings.auth.static_keys == ["k1", "k2"]


def test_a_secret_set_twice_is_an_error(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x")
    with pytest.raises(SettingsError, match="OMNISERVE_S3__SECRET_ACCESS_KEY and OMNISERVE_S3__SECRET_ACCESS_KEY_FILE"):
        load_settings(
            environ={"OMNISERVE_S3__SECRET_ACCESS_KEY": "y", "OMNISERVE_S3__SECRET_ACCESS_KEY_FILE": str(secret)}
        )


def test_an_unreadable_secret_file_names_its_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="OMNISERVE_S3__SECRET_ACCESS_KEY_FILE: cannot read"):
        load_settings(environ={"OMNISERVE_S3__SECRET_ACCESS_KEY_FILE": str(tmp_path / "missing")})
    with pytest.raises(SettingsError, match="OMNISERVE_AUTH__STATIC_KEYS_FILE: cannot read"):
        load_settings(environ={"OMNISERVE_AUTH__STATIC_KEYS_FILE": str(tmp_path)})  # a directory
    big = tmp_path / "big"
    big.write_bytes(b"x" * (settings_module.MAX_SETTING_FILE_BYTES + 1))
    with pytest.raises(SettingsError, match=r"OMNISERVE_S3__SESSION_TOKEN_FILE: .* is larger"):
        load_settings(environ={"OMNISERVE_S3__SESSION_TOKEN_FILE": str(big)})


def test_request_windows_default_off_except_novassium() -> None:
    windows = load_settings(environ={}).accounts.windows
    assert (windows.openai.requests_per_hour, windows.openai.requests_per_day) == (0, 0)
    assert (windows.v3.requests_per_hour, windows.v3.requests_per_day) == (0, 0)
    assert (windows.sdapi.requests_per_hour, windows.sdapi.requests_per_day) == (0, 0)
    assert (windows.novassium.requests_per_hour, windows.novassium.requests_per_day) == (100, 2400)


def test_each_familys_windows_are_settable(tmp_path: Path) -> None:
    config = tmp_path / "omniserve.toml"
    config.write_text("[accounts.windows.openai]\nrequests_per_hour = 500\n[accounts.windows.novassium]\n")
    settings = load_settings(config, environ={"OMNISERVE_ACCOUNTS__WINDOWS__NOVASSIUM__REQUESTS_PER_DAY": "0"})
    windows = settings.accounts.windows
    assert (windows.openai.requests_per_hour, windows.openai.requests_per_day) == (500, 0)
    # Each setting overrides only itself: the other window keeps the family's default.
    assert (windows.novassium.requests_per_hour, windows.novassium.requests_per_day) == (100, 0)
    assert settings.accounts.windows.limits("v3") == (0, 0)


def test_the_old_single_window_applies_to_every_family_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="omniserve.settings"):
        settings = load_settings(environ={"OMNISERVE_ACCOUNTS__REQUESTS_PER_HOUR": "10"})
    assert "deprecated" in caplog.text
    for family in ("openai", "v3", "novassium", "sdapi"):
        windows = getattr(settings.accounts.windows, family)
        assert (windows.requests_per_hour, windows.requests_per_day) == (10, 2400)


def test_the_old_single_window_and_the_new_ones_together_are_refused() -> None:
    with pytest.raises(SettingsError, match="cannot be set together"):
        load_settings(
            environ={
                "OMNISERVE_ACCOUNTS__REQUESTS_PER_HOUR": "10",
                "OMNISERVE_ACCOUNTS__WINDOWS__OPENAI__REQUESTS_PER_HOUR": "5",
            }
        )


def test_cluster_serve_is_a_comma_separated_list_in_the_environment() -> None:
    # A Deployment names the models its replicas run in their environment (deploy/).
    settings = load_settings(environ={"OMNISERVE_CLUSTER__SERVE": "chat-7b,chat-7b-lora"})
    assert settings.cluster.serve == ["chat-7b", "chat-7b-lora"]
    assert load_settings(environ={"OMNISERVE_CLUSTER__SERVE": "sdxl"}).cluster.serve == ["sdxl"]
