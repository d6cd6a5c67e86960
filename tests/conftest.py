"""Shared fixtures.

- `settings` overrides come from pytest-django; TELEMETRY knobs are patched
  through the `telemetry` fixture so each test states the limits it relies on.
- Tests use literal timestamps (time-machine) instead of sleeping.
- `client` is Django's test client routed like telemetry_project/asgi.py: the
  ingest paths reach the ingest ASGI app, as they do in production.
- Ingest runs on the writer thread as in production; a test inside its own
  transaction lends its connection to every thread (`_threads_share_the_test_transaction`).
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
from types import SimpleNamespace

import pytest
from django.db import DEFAULT_DB_ALIAS, connections

from metrics import stats
from metrics.alerts.rules import rules
from metrics.api import prometheus as prom
from metrics.api import views
from metrics.ingest import store
from metrics.ingest.writer import writer
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


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory):
    """The SQLite run's test database is a file of this run's own, unless TELEMETRY_TEST_SQLITE names one.

    A real file, as a server's is: WAL, a connection per thread, one write lock
    with a busy timeout (an in-memory database shares one cache and locks tables).
    """
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3" and not database["TEST"]["NAME"]:
        database["TEST"]["NAME"] = str(tmp_path_factory.mktemp("database") / "test.sqlite3")


# Fixtures through which a test gets the database (pytest-django's own).
_DATABASE_FIXTURES = {"db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback"}


@pytest.fixture(autouse=True)
def _threads_share_the_test_transaction(request):
    """A test inside its own transaction lends its connection to every thread, as LiveServerThread does.

    Ingest writes on the group-commit writer's thread and reads on pooled
    threads (DB_THREAD_POOL), each on a connection of its own in production.
    Here they borrow the test's: they see what the test stored, and what they
    store rolls back with it. Nobody but pytest-django may close it, so the
    close_old_connections() those threads run before each unit of work leaves
    it open (the test client skips it for its requests the same way).
    Transactional tests (django_db(transaction=True)) commit for real, so
    every thread keeps its own connection, as in production.
    """
    if not (request.node.get_closest_marker("django_db") or _DATABASE_FIXTURES & set(request.fixturenames)):
        yield
        return
    request.getfixturevalue("db")  # the test's transaction is open before anything is lent
    conn = connections[DEFAULT_DB_ALIAS]
    if not conn.in_atomic_block:
        yield
        return
    # A MonkeyPatch of its own: a test's monkeypatch.undo() must not take the connection back mid-test.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(connections, "_connections", SimpleNamespace(**{DEFAULT_DB_ALIAS: conn}))
        patch.setattr(conn, "close_if_unusable_or_obsolete", lambda: None)
        conn.inc_thread_sharing()
        try:
            yield
            # Nothing may still be writing on the connection when the test's transaction rolls back.
            writer.submit(lambda: None).future.result(timeout=60)
        finally:
            conn.dec_thread_sharing()


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
