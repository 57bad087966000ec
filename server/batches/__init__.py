"""The Files and Batch API: uploaded JSONL files, and batches that run their lines through the
same text services as the live routes, at background priority, durably (see runner.py)."""
