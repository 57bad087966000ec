"""Text to speech: OpenAI's /audio/speech streams one text, /v3 txt2speech stores a file per text."""
