"""Shared fixtures.

- `settings` overrides come from pytest-django; TELEMETRY knobs are patched
  through the `telemetry` fixture so each test states the limits it relies on.
- Tests use literal timestamps (time-machine) instead of sleeping.
"""

from __future__ import annotations

import pytest

from metrics import ingest, stats
from metrics.processor import rules


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Caches that outlive a test's transaction must not leak between tests."""
    ingest.known.clear()
    rules.invalidate()
    stats.reset()
    yield
    ingest.known.clear()
    rules.invalidate()


@pytest.fixture
def telemetry(settings):
    """Patch TELEMETRY knobs for one test: telemetry(MAX_TAGS=2)."""
    original = dict(settings.TELEMETRY)

    def patch(**values):
        settings.TELEMETRY = {**original, **values}
        return settings.TELEMETRY

    yield patch
    settings.TELEMETRY = original
