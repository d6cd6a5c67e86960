"""Retention: `manage.py prune` rolls up first, deletes by whole minutes, is idempotent.

Old points are written with store() directly (validation would refuse them,
which is the point: they are what a long-running server accumulates).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import numpy as np
import pytest
from django.core.management import call_command

from metrics.ingest.store import store
from metrics.ingest.validation import validate_points
from metrics.maintenance import retention
from metrics.models import Alert, Point, Rollup, RollupState
from metrics.points import Row
from metrics.series import rollups

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 1, 15, 12, 0, 30, tzinfo=UTC)


def put(at: datetime, value: float = 100.0, service: str = "api") -> None:
    store([Row(at, service, "latency", value, {})])


def alert(state: str, resolved_at: datetime | None, started_at: datetime, service: str = "api") -> Alert:
    return Alert.objects.create(
        service=service,
        metric_type="latency",
        severity="warning",
        state=state,
        value=600,
        latest_value=600,
        threshold=500,
        message="m",
        started_at=started_at,
        last_breach_at=started_at,
        resolved_at=resolved_at,
    )


def old_world() -> None:
    """Raw points on both sides of 24 h, rollups on both sides of 7 d, alerts on both sides of 7 d."""
    put(NOW - timedelta(hours=30))
    put(NOW - timedelta(hours=25))
    put(NOW - timedelta(hours=23))
    put(NOW - timedelta(minutes=5))
    for days in (8, 6):
        minute = rollups.floor_minute(NOW - timedelta(days=days))
        summaries = rollups.summarise(
            np.array(["api"], dtype=object),
            np.array(["cpu"], dtype=object),
            np.array([minute.timestamp()]),
            np.array([50.0]),
        )
        rollups._upsert(summaries)
    alert("resolved", NOW - timedelta(days=8), NOW - timedelta(days=8, hours=1), service="a")
    alert("resolved", NOW - timedelta(days=6), NOW - timedelta(days=6, hours=1), service="b")
    alert("firing", None, NOW - timedelta(days=10), service="c")  # old but still firing: kept


def test_prune_rolls_up_then_deletes_what_is_past_retention(frozen):
    old_world()
    report = retention.prune()
    assert report.rolled_up > 0
    assert (report.points_deleted, report.rollups_deleted, report.alerts_deleted) == (2, 1, 1)
    assert Point.objects.count() == 2
    assert Point.objects.order_by("timestamp").first().timestamp == NOW - timedelta(hours=23)
    assert not Rollup.objects.filter(minute__lt=NOW - timedelta(days=7)).exists()
    assert sorted(Alert.objects.values_list("service", flat=True)) == ["b", "c"]
    # Every deleted raw minute has its rollup.
    for hours in (30, 25):
        minute = rollups.floor_minute(NOW - timedelta(hours=hours))
        assert Rollup.objects.get(service="api", metric_type="latency", minute=minute).count == 1


def test_prune_is_idempotent(frozen):
    old_world()
    retention.prune()
    snapshot = (Point.objects.count(), Rollup.objects.count(), Alert.objects.count())
    again = retention.prune()
    assert (again.rolled_up, again.points_deleted, again.rollups_deleted, again.alerts_deleted) == (0, 0, 0, 0)
    assert (Point.objects.count(), Rollup.objects.count(), Alert.objects.count()) == snapshot


def test_dry_run_changes_nothing_and_predicts_the_real_run(frozen):
    old_world()
    before = (Point.objects.count(), Rollup.objects.count(), Alert.objects.count(), RollupState.objects.count())
    dry = retention.prune(dry_run=True)
    assert dry.dry_run is True
    assert (Point.objects.count(), Rollup.objects.count(), Alert.objects.count(), RollupState.objects.count()) == before
    real = retention.prune()
    assert (dry.points_deleted, dry.rollups_deleted, dry.alerts_deleted) == (
        real.points_deleted,
        real.rollups_deleted,
        real.alerts_deleted,
    )


def test_it_never_deletes_raw_minutes_that_have_no_rollup_yet(frozen, monkeypatch):
    put(NOW - timedelta(hours=30))
    put(NOW - timedelta(hours=26))
    # Rolled up only through 28 h ago (e.g. the roll-up step keeps failing).
    RollupState.objects.create(id=1, rolled_through=rollups.floor_minute(NOW - timedelta(hours=28)))
    monkeypatch.setattr(rollups, "roll_up", lambda now=None: 0)
    report = retention.prune()
    assert report.points_deleted == 1
    assert list(Point.objects.values_list("timestamp", flat=True)) == [NOW - timedelta(hours=26)]


def test_no_minute_is_lost_at_the_retention_edge(frozen, telemetry):
    telemetry(RAW_RETENTION_HOURS=24)
    edge_minute = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)  # the minute the cutoff (12:00:30) falls in
    put(edge_minute + timedelta(seconds=10), 10.0)
    put(edge_minute + timedelta(seconds=40), 20.0)
    retention.prune()
    # The minute is cut by the retention line but not deleted: it goes by whole minutes.
    assert Point.objects.filter(timestamp__gte=edge_minute).count() == 2
    # A late point inside that minute is still accepted (newer than now - 24 h)...
    store(
        validate_points(
            [{"service": "api", "metric_type": "latency", "value": 30.0, "timestamp": "2026-01-14T12:00:50Z"}]
        )
    )
    # ...and its minute's rollup is recomputed from a complete minute.
    r = Rollup.objects.get(service="api", metric_type="latency", minute=edge_minute)
    assert (r.count, r.sum, r.min, r.max) == (3, 60.0, 10.0, 30.0)
    # A minute later the whole minute is past retention and goes at once, its rollup intact.
    frozen.shift(timedelta(minutes=1))
    report = retention.prune()
    assert report.points_deleted == 3
    assert Rollup.objects.get(minute=edge_minute).count == 3


def test_deletes_run_in_batches(frozen, telemetry):
    telemetry(PRUNE_BATCH_ROWS=3)
    for i in range(10):
        put(NOW - timedelta(hours=30, minutes=i))
    assert retention.prune().points_deleted == 10
    assert Point.objects.count() == 0


def test_retention_periods_are_configurable(frozen, telemetry):
    telemetry(RAW_RETENTION_HOURS=1, ROLLUP_RETENTION_DAYS=1, ALERT_RETENTION_DAYS=1)
    put(NOW - timedelta(hours=2))
    alert("resolved", NOW - timedelta(days=2), NOW - timedelta(days=2))
    report = retention.prune()
    assert (report.points_deleted, report.alerts_deleted) == (1, 1)


def test_the_prune_command_prints_what_it_did(frozen):
    old_world()
    out = StringIO()
    call_command("prune", "--dry-run", stdout=out)
    assert "would delete 2 points" in out.getvalue()
    assert Point.objects.count() == 4
    out = StringIO()
    call_command("prune", stdout=out)
    text = out.getvalue()
    assert "deleted 2 points" in text and "1 rollups" in text and "1 resolved alerts" in text
    assert Point.objects.count() == 2
