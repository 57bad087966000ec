"""Loading `Settings`: a TOML file, then ``OMNISERVE_*`` variables over it.

Nested fields are reached from the environment with ``__``:
``OMNISERVE_LIMITS__MAX_BODY_BYTES=1048576`` sets ``limits.max_body_bytes``. ``<NAME>_FILE``
reads a setting from a file (secrets); variables that name no setting are logged once and
ignored. The model catalog is only configurable in TOML (it is a list of tables).
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from server.settings import ENV_PREFIX, Settings


class SettingsError(ValueError):
    pass


def _set_path(target: dict[str, Any], path: list[str], value: str) -> None:
    for key in path[:-1]:
        node = target.setdefault(key, {})
        if not isinstance(node, dict):
            raise SettingsError(f"{'.'.join(path)} conflicts with a scalar setting")
        target = node
    leaf = path[-1]
    # Lists from the environment are comma-separated.
    target[leaf] = value.split(",") if leaf in _LIST_FIELDS else value


# cluster.serve too: each replica of a Deployment sets the models it runs in its environment.
_LIST_FIELDS = frozenset({"static_keys", "static_admin_keys", "allowed_hosts", "serve"})
FILE_SUFFIX = "_FILE"
# A secret file is a key or a password; anything larger is a wrong path (a device, a log).
MAX_SETTING_FILE_BYTES = 64 * 1024
# Kubernetes gives every pod <SERVICE>_PORT=tcp://10.0.0.1:8000 for each Service in its
# namespace: for a Service named "omniserve" that is OMNISERVE_PORT, not a port of ours.
_SERVICE_LINK_SCHEMES = ("tcp://", "udp://", "sctp://")

log = logging.getLogger("omniserve.settings")
# Names already reported, so that loading settings again does not repeat the warning.
_reported: set[str] = set()


def _warn_once(name: str, message: str) -> None:
    if name not in _reported:
        _reported.add(name)
        log.warning(message)


def is_setting_path(path: list[str], struct: type[msgspec.Struct] = Settings) -> bool:
    """Whether ``path`` (lower-case field names) names one setting of ``struct``: a field that
    is not itself a section, reached through sections only."""
    fields = {field.name: field.type for field in msgspec.structs.fields(struct)}
    head, rest = path[0], path[1:]
    if head not in fields:
        return False
    kind = fields[head]
    is_section = isinstance(kind, type) and issubclass(kind, msgspec.Struct)
    if not rest:
        return not is_section
    return is_section and is_setting_path(rest, kind)


def _env_path(name: str) -> list[str]:
    return name[len(ENV_PREFIX) :].lower().split("__")


def _read_setting_file(name: str, file_name: str) -> str:
    try:
        with open(file_name, "rb") as handle:
            data = handle.read(MAX_SETTING_FILE_BYTES + 1)
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {file_name}: {exc.strerror or exc}") from None
    if len(data) > MAX_SETTING_FILE_BYTES:
        raise SettingsError(f"{name}: {file_name} is larger than {MAX_SETTING_FILE_BYTES} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise SettingsError(f"{name}: {file_name} is not UTF-8 text") from None
    # Files written by editors and `echo` end with a newline that is no part of the secret.
    return text.rstrip("\r\n")


def _environment_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The ``OMNISERVE_*`` variables that name settings, by variable name, with ``*_FILE``
    ones read. Other variables with the prefix are another program's (Kubernetes service
    links among them): each is logged once, by name only, and ignored."""
    chosen: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == f"{ENV_PREFIX}CONFIG":
            continue
        if is_setting_path(_env_path(name)):
            if name == f"{ENV_PREFIX}PORT" and value.strip().lower().startswith(_SERVICE_LINK_SCHEMES):
                _warn_once(name, f"ignoring {name}: a Kubernetes service link, not a port number")
                continue
            if name + FILE_SUFFIX in environ:
                raise SettingsError(f"{name} and {name}{FILE_SUFFIX} are both set; set one of them")
            chosen[name] = value
        elif name.endswith(FILE_SUFFIX) and is_setting_path(_env_path(name[: -len(FILE_SUFFIX)])):
            chosen[name[: -len(FILE_SUFFIX)]] = _read_setting_file(name, value)
        else:
            _warn_once(name, f"ignoring {name}: it names no setting")
    return chosen


def load_settings(config_file: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file:
        try:
            raw = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config {config_file}: {exc}") from exc
    for name, value in _environment_settings(environ).items():
        _set_path(raw, _env_path(name), value)
    accounts = raw.get("accounts")
    if isinstance(accounts, dict) and ("requests_per_hour" in accounts or "requests_per_day" in accounts):
        log.warning(
            "accounts.requests_per_hour/requests_per_day are deprecated: they now apply to every API "
            "family; set each family's windows under accounts.windows instead"
        )
    try:
        # strict=False lets "8080" from the environment become an int.
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid settings: {exc}") from exc
