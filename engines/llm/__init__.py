"""vLLM-backed engines: text generation, embeddings and cross-encoder scoring."""
