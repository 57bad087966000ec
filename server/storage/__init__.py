"""Where task outputs (images, videos, audio) live until their signed URLs expire."""
