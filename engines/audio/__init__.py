"""Audio engines: speech to text (faster-whisper) and text to speech (Coqui TTS)."""
