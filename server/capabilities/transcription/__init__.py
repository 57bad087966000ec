"""Speech to text: OpenAI's /audio/transcriptions and /audio/translations on faster-whisper."""
