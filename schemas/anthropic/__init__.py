"""Anthropic Messages API bodies (served under /v1/messages), and its stream events."""
