"""Decoding /v3 task bodies the way Novita clients send them (see server/validation.py)."""

from __future__ import annotations

from server.validation import decode_task_body

__all__ = ["decode_task_body"]
