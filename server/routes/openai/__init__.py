"""OpenAI-compatible routes; the same controllers are mounted at /openai/v1 and /v1."""
