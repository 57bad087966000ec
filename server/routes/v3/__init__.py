"""Novita-compatible /v3 routes."""
