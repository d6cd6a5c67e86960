"""Reading series: per-minute rollups, percentile sketches, the query engine and retention.

Never imports the write path, ingest/ (tests/test_architecture.py)."""
