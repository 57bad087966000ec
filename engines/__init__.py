"""Model runtimes behind small protocols, and the scheduler that owns device memory."""
