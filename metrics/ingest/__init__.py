"""Writing points: validation, the one submit() seam, the group-commit writer, storage and OTLP mapping.

Never imports live/ or api/ (tests/test_architecture.py)."""
