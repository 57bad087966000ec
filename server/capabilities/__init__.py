"""One home per capability: text, images, upscale, video, speech, transcription.

Each module owns its limits, the job it builds for its engine, the engine call and the
encoding of its output. The API families (OpenAI, /v3, the vendor routes) are adapters
that map their wire fields onto these and name the fields back through a `WireNames` table.
"""
