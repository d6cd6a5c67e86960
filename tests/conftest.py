"""Shared fixtures.

- `settings` overrides come from pytest-django; TELEMETRY knobs are patched
  through the `telemetry` fixture so each test states the limits it relies on.
- Tests use literal timestamps (time-machine) instead of sleeping.
- `client` is Django's test client routed like telemetry_project/asgi.py: the
  ingest paths reach the ingest ASGI app, as they do in production.
- A skipped test is listed loudly at the end of the run (`pytest_terminal_summary`),
  so a green line with skips in it is never mistaken for full coverage.
- tests/support/ holds what the modules share, documented in each file:
  clock.py `frozen` (the clock stopped at the module's NOW), `iso`, `at`;
  users.py `staff`, `viewer`, `staff_client`; ws.py the /ws/metrics client
  helpers (`connect`, `next_frame`, `frames_until`, `subscribe`); servers.py
  `own_server`, a live daphne on a database of its own.
"""

from __future__ import annotations

from collections import Counter

import pytest

from metrics import stats
from metrics.alerts.rules import rules
from metrics.api import prometheus as prom
from metrics.api import views
from metrics.ingest import store
from tests.asgi_client import RoutedClient

pytest_plugins = ["tests.support.clock", "tests.support.users"]


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Caches that outlive a test's transaction must not leak between tests."""
    store.known.clear()
    rules.invalidate()
    stats.reset()
    views.recent_health.clear()
    prom.clear_cache()
    yield
    store.known.clear()
    rules.invalidate()


@pytest.fixture
def client() -> RoutedClient:
    return RoutedClient()


@pytest.fixture
def telemetry(settings):
    """Patch TELEMETRY knobs for one test: telemetry(MAX_TAGS=2)."""
    original = dict(settings.TELEMETRY)

    def patch(**values):
        settings.TELEMETRY = {**original, **values}
        return settings.TELEMETRY

    yield patch
    settings.TELEMETRY = original


@pytest.fixture(scope="session", autouse=True)
def _release_test_database(django_db_setup, django_db_blocker):
    """Before pytest-django drops the PostgreSQL test database, end this run's other sessions.

    Worker threads (async views, sync_to_async executors, the broadcast path)
    keep their own connections, as they do in production; on PostgreSQL a
    database with sessions cannot be dropped, so teardown would fail with
    "being accessed by other users" after every test has passed.
    """
    yield
    with django_db_blocker.unblock():
        from django.db import connection

        if connection.vendor != "postgresql":
            return
        with connection.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


def _skip_reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr)


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    """Each skip reason with its count, in red, just above the final summary line."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons = Counter(_skip_reason(report) for report in skipped)
    terminalreporter.write_sep("!", f"{len(skipped)} TESTS SKIPPED: this run does not cover them", red=True, bold=True)
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"SKIPPED x{count}: {reason}", red=True, bold=True)
