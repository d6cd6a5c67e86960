"""The in-process scheduler that keeps a running server within retention.

Scheduler.tick takes the monotonic clock as an argument, so "what is due when"
is tested with literal numbers; one live test checks that a real server rolls
up and prunes by itself.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest

from metrics.alerts import anomaly
from metrics.ingest.store import store
from metrics.maintenance import retention
from metrics.maintenance import runner as scheduler
from metrics.maintenance.runner import Scheduler
from metrics.models import Point, Rollup
from metrics.points import Row
from metrics.series import rollups
from tests.live import LiveServer, migrate


@pytest.fixture
def calls(monkeypatch, telemetry):
    telemetry(ROLLUP_INTERVAL_SECONDS=15, PRUNE_INTERVAL_SECONDS=600)
    log: list[str] = []

    def fake_prune(now=None, dry_run=False):
        log.append("prune")
        return retention.PruneReport()

    def fake_roll_up(now=None):
        log.append("roll_up")
        return 0

    monkeypatch.setattr(retention, "prune", fake_prune)
    monkeypatch.setattr(rollups, "roll_up", fake_roll_up)
    monkeypatch.setattr(anomaly, "evaluate", lambda: None)  # reads the database; tests/test_anomaly_alerts.py pins it
    return log


@pytest.mark.django_db
def test_the_first_tick_prunes_which_also_rolls_up(calls):
    Scheduler().tick(1000.0)
    assert calls == ["prune"]


@pytest.mark.django_db
def test_roll_up_runs_every_rollup_interval_and_prune_every_prune_interval(calls):
    s = Scheduler()
    for t in (1000, 1001, 1014, 1015, 1016, 1030, 1599, 1600, 1601, 1615):
        s.tick(float(t))
    assert calls == ["prune", "roll_up", "roll_up", "roll_up", "prune", "roll_up"]


@pytest.mark.django_db
def test_nothing_is_due_between_intervals(calls):
    s = Scheduler()
    s.tick(0.0)
    calls.clear()
    for t in range(1, 15):
        s.tick(float(t))
    assert calls == []


@pytest.mark.django_db(transaction=True)
def test_a_tick_really_rolls_up_and_prunes(telemetry):
    # transaction=True: tick() runs outside any transaction in production, and
    # close_old_connections() would drop a connection left inside one.
    telemetry(RAW_RETENTION_HOURS=1)
    now = datetime.now(UTC)
    store(
        [
            Row(now - timedelta(hours=2), "api", "latency", 1.0, {}),
            Row(now - timedelta(minutes=5), "api", "latency", 2.0, {}),
        ]
    )
    Scheduler().tick(0.0)
    assert list(Point.objects.values_list("value", flat=True)) == [2.0]
    assert Rollup.objects.count() == 2


def test_the_thread_keeps_running_after_a_failing_pass(monkeypatch):
    s = Scheduler()
    passes: list[int] = []

    def flaky(now_monotonic=None):
        passes.append(1)
        if len(passes) == 1:
            raise RuntimeError("database briefly unavailable")

    monkeypatch.setattr(s, "tick", flaky)
    monkeypatch.setattr(scheduler, "connections", type("C", (), {"close_all": staticmethod(lambda: None)}))
    s.stop_event.wait = lambda timeout=None: s.stop_event.is_set()  # no pause between passes
    s.start()
    deadline = time.monotonic() + 10
    while len(passes) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    s.stop()
    assert len(passes) >= 3 and s.errors == 1
    assert not s.thread.is_alive()


def test_start_if_enabled_follows_the_setting(monkeypatch, telemetry):
    started: list[bool] = []
    monkeypatch.setattr(scheduler.scheduler, "start", lambda: started.append(True))
    telemetry(SCHEDULER_ENABLED=False)
    scheduler.start_if_enabled()
    assert started == []
    telemetry(SCHEDULER_ENABLED=True)
    scheduler.start_if_enabled()
    assert started == [True]


@pytest.mark.live
def test_a_running_server_rolls_up_and_prunes_by_itself(tmp_path):
    """Old rows in the database file, a server with the scheduler on: nobody acts, retention holds."""
    env = {
        "DATABASE_URL": "",  # this is about the in-process mechanism: the server's own SQLite file
        "REDIS_URL": "",
        "TELEMETRY_SCHEDULER": "1",
        "RAW_RETENTION_HOURS": "1",
        "ROLLUP_INTERVAL_SECONDS": "1",
        "PRUNE_INTERVAL_SECONDS": "1",
    }
    server = LiveServer(tmp_path, migrate_first=False, **env)
    migrate(server.env)
    db = tmp_path / "telemetry.sqlite3"
    now = datetime.now(UTC).replace(tzinfo=None)
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO metrics_point (timestamp, service, metric_type, value, tags) VALUES (?, 'api', 'latency', ?, '{}')",
            [((now - timedelta(hours=2)).isoformat(" "), 1.0), ((now - timedelta(minutes=3)).isoformat(" "), 2.0)],
        )
    with server:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with sqlite3.connect(db, timeout=20) as conn:
                points = conn.execute("SELECT value FROM metrics_point").fetchall()
                rolled = conn.execute("SELECT COUNT(*) FROM metrics_rollup").fetchone()[0]
            if points == [(2.0,)] and rolled == 2:
                break
            time.sleep(0.2)
    assert points == [(2.0,)], server.log()[-2000:]
    assert rolled == 2
