"""Novassium (Proxyle) ``POST /api/novassium/v1/generate`` (seed 000)."""

from __future__ import annotations

import msgspec


class GenerateRequest(msgspec.Struct, kw_only=True):
    # Every field is optional here so that a missing one gets the API's own message
    # ("Prompt is required.") rather than a generic decoding error.
    prompt: str | None = None
    style_preset: str | None = None
    aspect_ratio: str | None = None
    samples: int | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    output_format: str | None = None
    width: int | None = None
    height: int | None = None


class GenerateResponse(msgspec.Struct, kw_only=True):
    success: bool
    images: list[str]
    # None for a key without a balance (unmetered) and on an open server.
    remaining_credits: int | float | None


class ErrorResponse(msgspec.Struct, kw_only=True):
    success: bool
    message: str
    # The error code of the API's table (missing_parameters, invalid_api_key, ...).
    code: str
