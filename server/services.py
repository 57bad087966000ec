"""Transitional: the composition root's old name, for handlers not yet given their services."""

from server.composition import Components as Services

__all__ = ["Services"]
