"""Novita /v3 request and response bodies."""
