"""Retention deletes in small batches, each its own transaction, and leaves the lock free between them.

PRUNE_BATCH_ROWS is set small so a handful of points takes several batches;
retention._pause (the wait between two batches) is replaced where a test needs
to act between batches. Old points are written with store() directly, as in
tests/test_prune.py (validation would refuse them). The last test is the
behaviour behind bench figure 6: a live daphne on a SQLite file answers and
commits an ingest while a `prune` in another process is stopped between two
batches.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest

from metrics.ingest.store import store
from metrics.maintenance import retention
from metrics.models import Alert, Point, Rollup
from metrics.points import Row
from metrics.series import rollups
from tests.live import ROOT
from tests.support.servers import own_server

NOW = datetime(2026, 1, 15, 12, 0, 30, tzinfo=UTC)
# Raw retention 24 h, whole minutes: everything before 2026-01-14 12:00:00 goes.
CUT = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)


def put(at: datetime, service: str = "api", value: float = 1.0) -> int:
    store([Row(at, service, "latency", value, {})])
    return Point.objects.filter(service=service, timestamp=at).values_list("id", flat=True).get()


@pytest.fixture
def small_batches(telemetry, frozen):
    telemetry(PRUNE_BATCH_ROWS=3, RAW_RETENTION_HOURS=24)


@pytest.fixture
def pauses(monkeypatch):
    """Records each pause between batches instead of sleeping; tests may add an action to it."""
    calls: list[float] = []
    actions: list = []

    def pause(held: float) -> None:
        calls.append(held)
        for action in actions:
            action(len(calls))

    monkeypatch.setattr(retention, "_pause", pause)
    return calls, actions


@pytest.mark.django_db
def test_prune_deletes_exactly_what_is_past_retention_in_several_batches(small_batches, pauses):
    calls, _ = pauses
    old = [CUT - timedelta(minutes=i + 1) for i in range(9)]
    for at in old:
        put(at)
    kept = [CUT, CUT + timedelta(seconds=59), NOW - timedelta(minutes=1)]
    for at in kept:
        put(at)
    # Arrived last (highest id) with the oldest timestamp: batches follow time, not ids.
    late_old = CUT - timedelta(hours=3)
    put(late_old, service="late")

    report = retention.prune()

    assert report.points_deleted == 10
    assert sorted(Point.objects.values_list("timestamp", flat=True)) == kept
    assert len(calls) == 3  # 10 rows in batches of 3: 3 + 3 + 3 + 1, a pause after each full batch
    # Every deleted minute was rolled up first.
    assert Rollup.objects.get(service="late", minute=late_old).count == 1


@pytest.mark.django_db
def test_a_point_written_between_batches_is_not_lost(small_batches, pauses):
    _, actions = pauses
    for i in range(6):
        put(CUT - timedelta(minutes=i + 1))
    inside = put(CUT + timedelta(seconds=1), service="inside")
    written = {}

    def write_between_batches(n: int) -> None:
        if n == 1:
            # A point inside retention, then an old one after it (a backfill): the
            # next batch takes the old one, whose id is above the kept points' ids.
            written["new"] = put(NOW - timedelta(seconds=5), service="new")
            written["old"] = put(CUT - timedelta(hours=2), service="backfill")

    actions.append(write_between_batches)
    report = retention.prune()

    assert report.points_deleted == 7
    assert set(Point.objects.values_list("id", flat=True)) == {inside, written["new"]}


@pytest.mark.django_db
def test_dry_run_agrees_with_the_real_run_in_batches(small_batches, pauses):
    calls, _ = pauses
    for i in range(8):
        put(CUT - timedelta(minutes=i + 1), service=f"s{i % 3}")
    put(NOW - timedelta(minutes=2))
    put(CUT - timedelta(hours=5), service="late")
    for days in range(6, 10):
        minute = rollups.floor_minute(NOW - timedelta(days=days))
        rollups._upsert(
            rollups.summarise(
                np.array(["api"], dtype=object),
                np.array(["cpu"], dtype=object),
                np.array([minute.timestamp()]),
                np.array([50.0]),
            )
        )
    for days in (6, 8, 9, 10, 11):
        Alert.objects.create(
            service=f"a{days}",
            metric_type="latency",
            severity="warning",
            state="resolved",
            value=600,
            latest_value=600,
            threshold=500,
            message="m",
            started_at=NOW - timedelta(days=days, hours=1),
            last_breach_at=NOW - timedelta(days=days, hours=1),
            resolved_at=NOW - timedelta(days=days),
        )

    dry = retention.prune(dry_run=True)
    real = retention.prune()

    assert (dry.points_deleted, dry.rollups_deleted, dry.alerts_deleted) == (9, 3, 4)
    assert (real.points_deleted, real.rollups_deleted, real.alerts_deleted) == (9, 3, 4)
    assert (dry.series_deleted, dry.services_deleted) == (real.series_deleted, real.services_deleted)
    assert len(calls) >= 4  # several batches of points, rollups and alerts


def busy_handler_attempts(until_ms: float) -> list[float]:
    """When a writer blocked on SQLite's lock tries again, in ms after it first found it taken."""
    times, elapsed = [0.0], 0.0
    sleeps = iter(retention.BUSY_HANDLER_SLEEPS_MS)
    while elapsed < until_ms:
        elapsed += next(sleeps, 100)
        times.append(elapsed)
    return times


def test_the_pause_after_a_batch_always_contains_a_waiting_writers_next_attempt():
    # A writer that found the lock taken at any moment of a batch that held it
    # for `held` ms tries again during the pause that follows, never only after
    # the next batch has taken the lock again.
    attempts = busy_handler_attempts(2000)
    for held in np.arange(0.5, 400, 0.5):
        pause = retention.busy_poll_interval(held / 1000) * 1000
        for waited in np.arange(0.25, held + 0.25, 0.25):
            assert any(waited <= t < waited + pause for t in attempts), (held, waited, pause)


# --- Ingest during a prune, on a live server --------------------------------------------

PRUNE_SCRIPT = r"""
import json, os, sys
from datetime import UTC, datetime, timedelta
import django
django.setup()
from django.db import transaction
from metrics.ingest.store import store
from metrics.maintenance import retention
from metrics.points import Row

now = datetime.now(UTC)
old = [Row(now - timedelta(hours=30, seconds=i), "old", "latency", 1.0, {}) for i in range(int(sys.argv[1]))]
with transaction.atomic():
    store(old)

def pause(held):
    # Stop between two batches until the test says go.
    print("paused", flush=True)
    sys.stdin.readline()

retention._pause = pause
print(json.dumps(retention.prune().as_dict()), flush=True)
"""


def _lines(proc: subprocess.Popen) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _count(db: str, service: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=20) as conn:
        return conn.execute("SELECT COUNT(*) FROM metrics_point WHERE service = ?", [service]).fetchone()[0]


def test_an_ingest_is_committed_while_a_prune_is_stopped_between_batches(tmp_path):
    with own_server(tmp_path, DATABASE_URL="", REDIS_URL="", REQUIRE_API_KEY="0") as server:
        db = str(tmp_path / "telemetry.sqlite3")
        env = {
            **server.env,
            "DJANGO_SETTINGS_MODULE": "telemetry_project.settings",
            "PRUNE_BATCH_ROWS": "20",
            "LOG_LEVEL": "WARNING",
        }
        prune = subprocess.Popen(
            [sys.executable, "-c", PRUNE_SCRIPT, "100"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            lines = _lines(prune)

            def next_pause() -> None:
                if lines.get(timeout=120) != "paused":
                    pytest.fail(f"prune stopped early: {prune.stderr.read()[-2000:]}")  # type: ignore[union-attr]

            def go() -> None:
                prune.stdin.write("\n")  # type: ignore[union-attr]
                prune.stdin.flush()  # type: ignore[union-attr]

            next_pause()
            go()
            next_pause()  # two batches deleted, three to go

            answer = httpx.post(
                server.url + "/metrics/ingest",
                json={"service": "fresh", "metric_type": "latency", "value": 5.0},
                timeout=30,
            )

            # Answered and committed while the prune is still stopped mid-way.
            assert answer.status_code == 200, answer.text
            assert prune.poll() is None and lines.empty()
            assert _count(db, "fresh") == 1
            assert _count(db, "old") == 60

            go()
            report = None
            while report is None:
                line = lines.get(timeout=120)
                assert line is not None, prune.stderr.read()[-2000:]  # type: ignore[union-attr]
                if line == "paused":
                    go()
                else:
                    report = json.loads(line)
            assert prune.wait(60) == 0
        finally:
            if prune.poll() is None:
                prune.kill()
                prune.wait(10)
        assert report["points_deleted"] == 100
        assert (_count(db, "old"), _count(db, "fresh")) == (0, 1)
