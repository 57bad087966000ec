"""The one prompt limit: every text a schema marks ``PromptText`` (schemas/constraints.py) holds at
most ``limits.max_prompt_chars`` characters, on every route that decodes a body.

The limit is a setting, so it cannot be a ``msgspec.Meta`` bound (those are fixed when the schema
is defined); ``server/validation.convert`` calls ``check_prompts`` on every decoded body instead.
A text encoder's work grows with the prompt, and a diffusion job holds the only slot of its device
while it encodes: the limit keeps one request from occupying it for minutes.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from schemas.constraints import PROMPT_TEXT
from schemas.errors import ApiError, ErrorCode
from schemas.limits import MAX_PROMPT_CHARS

_limit = MAX_PROMPT_CHARS


def set_max_prompt_chars(limit: int) -> None:
    """The server's limit, from its settings (set when the app is built)."""
    global _limit
    if limit < 1:
        raise ValueError("limits.max_prompt_chars must be at least 1")
    _limit = limit


def max_prompt_chars() -> int:
    return _limit


def _is_marked(info: Any) -> bool:
    inspect = msgspec.inspect
    if isinstance(info, inspect.Metadata):
        return bool((info.extra or {}).get(PROMPT_TEXT)) or _is_marked(info.type)
    if isinstance(info, inspect.UnionType):
        return any(_is_marked(member) for member in info.types)
    return False


@functools.cache
def _prompt_fields(struct_type: type[msgspec.Struct]) -> dict[str, tuple[str, bool]]:
    """For each field of ``struct_type``: its wire name and whether it (or each item of a list
    of it) is prompt text."""
    inspect = msgspec.inspect
    info = inspect.type_info(struct_type)
    fields: dict[str, tuple[str, bool]] = {}
    if not isinstance(info, inspect.StructType):
        return fields
    for field in info.fields:
        marked = _is_marked(field.type)
        base = field.type
        while isinstance(base, inspect.Metadata):
            base = base.type
        if isinstance(base, inspect.UnionType):
            lists = [m for m in base.types if isinstance(m, inspect.ListType)]
            base = lists[0] if lists else base
        if isinstance(base, inspect.ListType):
            marked = marked or _is_marked(base.item_type)
        fields[field.name] = (field.encode_name, marked)
    return fields


def _structs_in(info: Any) -> list[type[msgspec.Struct]]:
    """The struct types a field of type ``info`` may hold, directly or inside lists and unions."""
    inspect = msgspec.inspect
    if isinstance(info, inspect.Metadata):
        return _structs_in(info.type)
    if isinstance(info, inspect.UnionType):
        return [found for member in info.types for found in _structs_in(member)]
    if isinstance(info, inspect.ListType):
        return _structs_in(info.item_type)
    if isinstance(info, inspect.StructType):
        return [info.cls]
    return []


@functools.cache
def _holds_prompts(struct_type: type[msgspec.Struct]) -> bool:
    """Whether any prompt text can sit in ``struct_type`` at any depth: bodies that hold none
    (every text request) are not walked at all."""
    seen: set[type[msgspec.Struct]] = set()
    pending = [struct_type]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        if any(marked for _, marked in _prompt_fields(current).values()):
            return True
        info = msgspec.inspect.type_info(current)
        if isinstance(info, msgspec.inspect.StructType):
            pending.extend(found for field in info.fields for found in _structs_in(field.type))
    return False


def check_prompts(value: Any, path: str = "") -> None:
    """Refuse (400 INVALID_REQUEST_BODY naming the field) a prompt text of ``value`` over the limit."""
    if isinstance(value, msgspec.Struct):
        if not _holds_prompts(type(value)):
            return
        for name, (wire, marked) in _prompt_fields(type(value)).items():
            item = getattr(value, name)
            if not marked and not isinstance(item, msgspec.Struct | list):
                continue
            where = f"{path}.{wire}" if path else wire
            if marked:
                _check_text(item, where)
            check_prompts(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, msgspec.Struct | list):
                check_prompts(item, f"{path}[{index}]")


def _check_text(value: Any, where: str) -> None:
    texts = enumerate(value) if isinstance(value, list) else [(None, value)]
    for index, text in texts:
        if isinstance(text, str) and len(text) > _limit:
            param = where if index is None else f"{where}[{index}]"
            raise ApiError(
                ErrorCode.INVALID_REQUEST_BODY,
                f"{param} is {len(text)} characters; at most {_limit} are accepted.",
                param=param,
            )
