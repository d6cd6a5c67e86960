"""The standing benchmark: `python -m bench [--quick] [--postgres]` (see docs/performance.md)."""
