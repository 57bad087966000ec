from __future__ import annotations

from pathlib import Path

import pytest

from server.cli import main


def test_refuses_a_public_address_without_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMNISERVE_DATA_DIR", str(tmp_path))
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in capsys.readouterr().err


def test_keys_lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OMNISERVE_DATA_DIR", str(tmp_path))
    assert main(["keys", "create", "ops"]) == 0
    created = capsys.readouterr().out
    key_id = created.split("id:")[1].split()[0]
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed and "active" in listed and "os-" not in listed
    assert main(["keys", "rotate", key_id]) == 0
    assert main(["keys", "revoke", key_id]) == 0
    assert main(["keys", "revoke", key_id]) == 1


def test_bad_settings_exit_cleanly(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OMNISERVE_PORT", "not-a-port")
    assert main(["keys", "list"]) == 2
    assert "invalid settings" in capsys.readouterr().err


def test_kubernetes_service_links_do_not_stop_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A namespace with a Service named "omniserve" gives every pod these variables."""
    monkeypatch.setenv("OMNISERVE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OMNISERVE_PORT", "tcp://10.0.0.1:8000")
    monkeypatch.setenv("OMNISERVE_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("OMNISERVE_PORT_8000_TCP_ADDR", "10.0.0.1")
    assert main(["keys", "list"]) == 0
