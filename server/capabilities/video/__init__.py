"""Video generation: /v3 txt2video and img2video tasks, and OpenAI's video jobs over them."""
