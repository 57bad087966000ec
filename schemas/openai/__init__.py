"""OpenAI-compatible request and response bodies (served under /openai/v1 and /v1)."""
