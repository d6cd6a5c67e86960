"""Coarser rollup tiers: 5-minute, 30-minute and hour windows merged from the minute rollups.

A tier answer must be the minute answer: the same buckets with the same
count, min, max and percentiles (the merged sketches hold the same bucket
counts) and the same sum up to float rounding. These tests build data through
the one ingestion path with the clock frozen at literal times, answer the same
query once from the tiers and once from the minutes alone (`tier_for`
answering None), and compare.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import numpy as np
import pytest
import time_machine
from django.core.management import call_command
from django.db import connection

from metrics.ingest.store import store
from metrics.ingest.validation import validate_points
from metrics.maintenance import retention
from metrics.models import CoarseRollup, Rollup, RollupState
from metrics.points import Row
from metrics.series import query, rollups, sketch

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 1, 15, 12, 0, 30, tzinfo=UTC)
START = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)  # three hours of data before NOW


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def fill(start: datetime = START, end: datetime = NOW, per_minute: int = 6, seed: int = 1) -> None:
    """Points every 10 s for two series, from `start` to the minute before `end`, then rolled up."""
    rng = np.random.default_rng(seed)
    minutes = int((rollups.floor_minute(end) - start).total_seconds() // 60)
    rows = []
    for m in range(minutes):
        minute = start + timedelta(minutes=m)
        for service, metric_type, values in (
            ("api", "latency", rng.lognormal(4.5, 0.8, per_minute)),
            ("auth", "latency", rng.lognormal(3.0, 0.5, per_minute)),
        ):
            rows += [
                Row(minute + timedelta(seconds=60 * i / per_minute), service, metric_type, float(v), {})
                for i, v in enumerate(values)
            ]
    store(rows, now=end)
    rollups.roll_up(now=end)


def minute_merge(service: str, metric_type: str, start: datetime, width: int) -> dict:
    minutes = list(
        Rollup.objects.filter(service=service, metric_type=metric_type).window(start, start + timedelta(seconds=width))
    )
    return {
        "count": sum(r.count for r in minutes),
        "sum": sum(r.sum for r in minutes),
        "min": min(r.min for r in minutes),
        "max": max(r.max for r in minutes),
        "sketch": sketch.merge([bytes(r.sketch) for r in minutes]),
    }


def assert_windows_equal_their_minutes() -> int:
    windows = list(CoarseRollup.objects.all())
    for w in windows:
        expected = minute_merge(w.service, w.metric_type, w.start, w.width)
        assert (w.count, w.min, w.max) == (expected["count"], expected["min"], expected["max"]), w
        assert w.sum == pytest.approx(expected["sum"], rel=1e-12)
        assert bytes(w.sketch) == expected["sketch"], w
        # Stored percentiles are the window's own: its sketch, clamped to its min and max.
        own = np.clip(sketch.quantiles(bytes(w.sketch), rollups.PERCENTILES), w.min, w.max).tolist()
        assert [w.p50, w.p95, w.p99] == own, w
    return len(windows)


def answer(monkeypatch, tiers: bool, **params) -> dict:
    with monkeypatch.context() as m:
        if not tiers:
            m.setattr(rollups, "tier_for", lambda size: None)
        return query.run(query.parse_query(params, now=NOW), now=NOW)


def assert_same_answer(a: dict, b: dict) -> None:
    assert a["bucket_seconds"] == b["bucket_seconds"] and a["source"] == b["source"] == "rollup"
    assert len(a["data"]) == len(b["data"]) > 0
    for x, y in zip(a["data"], b["data"], strict=True):
        for key in ("timestamp", "service", "metric_type", "count", "min", "max", "p50", "p95", "p99"):
            assert x[key] == y[key], (key, x, y)
        assert x["avg"] == pytest.approx(y["avg"], rel=1e-12)


@pytest.fixture
def reads(monkeypatch):
    """The tier widths each answer read, in order."""
    widths: list[int] = []
    fetch = rollups.fetch_tier

    def spy(width, *args):
        widths.append(width)
        return fetch(width, *args)

    monkeypatch.setattr(rollups, "fetch_tier", spy)
    return widths


def test_roll_up_writes_each_complete_window_of_every_tier_as_the_merge_of_its_minutes():
    with time_machine.travel(NOW, tick=False):
        fill()
    # 09:00-12:00 for 2 series: 36 five-minute, 6 half-hour and 3 hour windows each.
    counts = {width: CoarseRollup.objects.filter(width=width).count() for width in rollups.TIERS}
    assert counts == {300: 72, 1800: 12, 3600: 6}
    assert assert_windows_equal_their_minutes() == 90
    # The hour in progress (12:00) has no window yet; the tiers start where rolling up did.
    assert not CoarseRollup.objects.filter(start__gte=at("2026-01-15T12:00:00Z")).exists()
    assert RollupState.get().tiered_from == START


def test_roll_up_in_small_steps_writes_the_same_windows_as_one_pass():
    with time_machine.travel(NOW, tick=False):
        fill(end=START + timedelta(minutes=1))
        rows = []
        rng = np.random.default_rng(3)
        for m in range(1, 180):
            minute = START + timedelta(minutes=m)
            rows += [
                Row(minute + timedelta(seconds=s), "api", "latency", float(rng.uniform(1, 500)), {}) for s in (0, 30)
            ]
        store(rows, now=NOW)
        for step in range(7, 181, 7):  # roll-ups every 7 minutes: windows complete mid-chunk
            rollups.roll_up(now=START + timedelta(minutes=step))
        rollups.roll_up(now=NOW)
    assert CoarseRollup.objects.filter(service="api", width=3600).count() == 3
    assert assert_windows_equal_their_minutes() > 0


@pytest.mark.parametrize(
    "params, width",
    [
        # Unaligned edges: the minutes before the first and after the last whole window.
        ({"start_time": "2026-01-15T09:07:20Z", "end_time": "2026-01-15T11:52:10Z", "aggregation": "1h"}, 3600),
        ({"start_time": "2026-01-15T09:07:20Z", "end_time": "2026-01-15T11:52:10Z", "aggregation": "5m"}, 300),
        # 2 h 50 m of `auto`: 60-second buckets, minutes only.
        ({"start_time": "2026-01-15T09:03:00Z", "end_time": "2026-01-15T11:53:00Z", "aggregation": "auto"}, None),
        ({"start_time": "2026-01-15T09:00:00Z", "end_time": "2026-01-15T12:00:30Z", "aggregation": "1h"}, 3600),
        # One service, a range inside one hour.
        (
            {
                "start_time": "2026-01-15T10:10:00Z",
                "end_time": "2026-01-15T10:50:00Z",
                "aggregation": "5m",
                "services": ["auth"],
            },
            300,
        ),
    ],
)
def test_an_answer_from_a_tier_is_the_answer_from_the_minutes(monkeypatch, reads, params, width, telemetry):
    telemetry(RAW_RETENTION_HOURS=1)  # older than 1 h: rollups only, even for 5-minute buckets
    with time_machine.travel(NOW, tick=False):
        fill()
        from_minutes = answer(monkeypatch, tiers=False, **params)
        assert reads == []
        from_tiers = answer(monkeypatch, tiers=True, **params)
    assert reads == ([width] if width else [])
    assert_same_answer(from_tiers, from_minutes)


def test_thirty_minute_buckets_of_a_week_read_the_half_hour_tier(monkeypatch, reads):
    # The figure-3 shape: 7 d of `auto` is 1800-second buckets.
    now = datetime(2026, 1, 22, 12, 0, 30, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        fill(start=datetime(2026, 1, 15, 13, 0, tzinfo=UTC), end=datetime(2026, 1, 15, 17, 0, tzinfo=UTC), per_minute=2)
        rollups.roll_up(now=now)
        params = {"start_time": "2026-01-15T12:15:00Z", "end_time": "2026-01-22T12:00:00Z", "aggregation": "auto"}
        with monkeypatch.context() as m:
            m.setattr(rollups, "tier_for", lambda size: None)
            from_minutes = query.run(query.parse_query(params, now=now), now=now)
        from_tiers = query.run(query.parse_query(params, now=now), now=now)
    assert from_tiers["bucket_seconds"] == 1800 and reads == [1800]
    assert_same_answer(from_tiers, from_minutes)


def test_a_late_point_recomputes_its_minute_and_every_tier_window_that_holds_it(monkeypatch):
    with time_machine.travel(NOW, tick=False):
        fill()
        before = {(w.width, w.start): w.count for w in CoarseRollup.objects.filter(service="api")}
        store(
            validate_points(
                [{"service": "api", "metric_type": "latency", "value": 4321.0, "timestamp": "2026-01-15T10:17:20Z"}]
            )
        )
    changed = {
        (w.width, w.start) for w in CoarseRollup.objects.filter(service="api") if w.count != before[(w.width, w.start)]
    }
    assert changed == {
        (300, at("2026-01-15T10:15:00Z")),
        (1800, at("2026-01-15T10:00:00Z")),
        (3600, at("2026-01-15T10:00:00Z")),
    }
    hour = CoarseRollup.objects.get(service="api", width=3600, start=at("2026-01-15T10:00:00Z"))
    assert (hour.count, hour.max) == (before[(3600, at("2026-01-15T10:00:00Z"))] + 1, 4321.0)
    assert assert_windows_equal_their_minutes() == 90
    # ...and the hour-bucket answer still is the minute answer, the late point in it.
    params = {"start_time": "2026-01-15T09:00:00Z", "end_time": "2026-01-15T12:00:00Z", "aggregation": "1h"}
    with time_machine.travel(NOW, tick=False):
        from_tiers = answer(monkeypatch, tiers=True, **params)
        assert_same_answer(from_tiers, answer(monkeypatch, tiers=False, **params))
    assert [r["max"] for r in from_tiers["data"] if r["service"] == "api"][1] == 4321.0


def test_a_late_point_in_a_window_still_open_reaches_it_when_it_completes():
    with time_machine.travel(NOW, tick=False):
        fill(end=at("2026-01-15T11:40:30Z"))  # rolled up through 11:40: the 11:00 hour is open
        assert not CoarseRollup.objects.filter(width=3600, start=at("2026-01-15T11:00:00Z")).exists()
        store(
            validate_points(
                [{"service": "api", "metric_type": "latency", "value": 9876.0, "timestamp": "2026-01-15T11:20:05Z"}]
            )
        )
        half = CoarseRollup.objects.get(service="api", width=1800, start=at("2026-01-15T11:00:00Z"))
        assert half.max == 9876.0  # 11:00-11:30 was complete: recomputed in the ingest transaction
        # The open hour gets no partial row; roll_up writes it once it is complete.
        assert not CoarseRollup.objects.filter(width=3600, start=at("2026-01-15T11:00:00Z")).exists()
        rollups.roll_up(now=NOW)
    hour = CoarseRollup.objects.get(service="api", width=3600, start=at("2026-01-15T11:00:00Z"))
    assert hour.max == 9876.0
    assert assert_windows_equal_their_minutes() == 90 - 2 * 4  # no data after 11:40: no 5-minute windows


def test_tiers_are_read_only_from_tiered_from_on(monkeypatch, reads, telemetry):
    """A database rolled up before the tiers existed reads its older minutes until backfill_tiers has run."""
    telemetry(RAW_RETENTION_HOURS=1)
    with time_machine.travel(NOW, tick=False):
        fill()
        # As migration 0007 leaves a database: no windows, tiers from the rolled-up boundary.
        CoarseRollup.objects.all().delete()
        RollupState.objects.filter(id=1).update(tiered_from=at("2026-01-15T11:20:00Z"))
        # ...and the windows roll_up has completed since.
        rollups.build_tiers(rollups.completed_windows(at("2026-01-15T11:20:00Z"), at("2026-01-15T12:00:00Z")))
        params = {"start_time": "2026-01-15T09:00:00Z", "end_time": "2026-01-15T12:00:00Z", "aggregation": "5m"}
        from_minutes = answer(monkeypatch, tiers=False, **params)
        assert_same_answer(answer(monkeypatch, tiers=True, **params), from_minutes)
        assert reads == [300]
        assert rollups.backfill_tiers(span=timedelta(hours=1)) > 0  # 10:00 up to 11:20, the windows before tiered_from
        assert RollupState.get().tiered_from == at("2026-01-15T10:00:00Z")
        rollups.roll_up(now=NOW)  # nothing left to roll up; the runner's pass takes the next step (09:00-10:00)
        assert RollupState.get().tiered_from == START
        assert_same_answer(answer(monkeypatch, tiers=True, **params), from_minutes)
    assert assert_windows_equal_their_minutes() == 90


def test_prune_deletes_tier_windows_with_the_rollup_retention(telemetry):
    telemetry(ROLLUP_RETENTION_DAYS=1)
    with time_machine.travel(NOW, tick=False):
        fill()
    later = at("2026-01-16T10:02:00Z")  # the retention cut is 2026-01-15T10:02
    with time_machine.travel(later, tick=False):
        report = retention.prune(now=later)
    # Windows that start before the cut go, 10:00's too (its first minutes are gone):
    # 09:00-10:00 for each tier, and 10:00 for each tier (10:00 five-minute window as well).
    assert report.tier_windows_deleted == 2 * (13 + 3 + 2)
    assert not CoarseRollup.objects.filter(start__lt=at("2026-01-15T10:02:00Z")).exists()
    assert list(CoarseRollup.objects.filter(width=3600).values_list("start", flat=True).distinct()) == [
        at("2026-01-15T11:00:00Z")
    ]


def test_generate_metrics_backfill_writes_tier_windows_through_roll_up(monkeypatch, telemetry):
    telemetry(RAW_RETENTION_HOURS=1)
    with time_machine.travel(NOW, tick=False):
        call_command(
            "generate_metrics",
            backfill=3,
            no_stream=True,
            services="api",
            seed=5,
            step=30,
            stdout=StringIO(),
            stderr=StringIO(),
        )
        assert CoarseRollup.objects.filter(width=3600, service="api").count() >= 2 * 5
        assert assert_windows_equal_their_minutes() > 0
        params = {"start_time": "2026-01-15T09:00:00Z", "end_time": "2026-01-15T12:00:00Z", "aggregation": "1h"}
        assert_same_answer(answer(monkeypatch, tiers=True, **params), answer(monkeypatch, tiers=False, **params))


def test_merge_groups_gives_the_bytes_of_merge_for_each_group():
    rng = np.random.default_rng(9)
    blobs = [sketch.encode(rng.lognormal(3, 1.5, rng.integers(1, 40))) for _ in range(50)]
    groups = rng.integers(0, 7, 50)
    merged = sketch.merge_groups(blobs, groups, 8)
    assert merged[7] == b""  # a group with no blob
    for g in range(7):
        assert merged[g] == sketch.merge([b for b, k in zip(blobs, groups, strict=True) if k == g])


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's EXPLAIN QUERY PLAN")
def test_a_tier_read_is_an_index_range_search():
    where, params = rollups.series_where(
        "start", at("2026-01-08T12:00:00Z"), at("2026-01-15T12:00:00Z"), ["api", "auth"], ["latency"]
    )
    with connection.cursor() as cur:
        cur.execute(
            f"EXPLAIN QUERY PLAN SELECT * FROM metrics_coarserollup WHERE {where} AND width = %s", [*params, 1800]
        )
        plan = " ".join(str(row[-1]) for row in cur.fetchall())
    assert plan.startswith("SEARCH metrics_coarserollup USING INDEX"), plan
    assert "width=? AND start>? AND start<?" in plan, plan


def test_the_dashboard_totals_read_hour_windows_and_equal_the_minute_totals(monkeypatch):
    from django.test.utils import CaptureQueriesContext

    from dashboard.status import window_totals

    with time_machine.travel(NOW, tick=False):
        fill()
        store([Row(at("2026-01-15T12:00:10Z"), "api", "latency", 50.0, {})], now=NOW)  # after the boundary: raw
        start, end = at("2026-01-15T09:12:40Z"), NOW
        with CaptureQueriesContext(connection) as queries:
            from_tiers = window_totals(start, end, None)
        with monkeypatch.context() as m:
            m.setattr(rollups, "tier_span", lambda *args: None)
            from_minutes = window_totals(start, end, None)
    assert any("metrics_coarserollup" in q["sql"] for q in queries.captured_queries)
    assert set(from_tiers) == set(from_minutes) == {("api", "latency"), ("auth", "latency")}
    for key, (total, count) in from_minutes.items():
        assert from_tiers[key][1] == count
        assert from_tiers[key][0] == pytest.approx(total, rel=1e-12)


def test_a_bucket_that_is_one_window_answers_its_stored_percentiles_and_a_window_without_them_merges(
    monkeypatch, telemetry
):
    telemetry(RAW_RETENTION_HOURS=1)
    params = {"start_time": "2026-01-15T09:00:00Z", "end_time": "2026-01-15T12:00:00Z", "aggregation": "1h"}
    with time_machine.travel(NOW, tick=False):
        fill()
        merged = answer(monkeypatch, tiers=False, **params)
        ten = CoarseRollup.objects.filter(service="api", width=3600, start=at("2026-01-15T10:00:00Z"))
        # A marker no sketch would give proves the stored column is what answers...
        ten.update(p95=-1.0)
        marked = answer(monkeypatch, tiers=True, **params)
        # ...and a window written before the columns existed (NULL) is merged from its sketch.
        ten.update(p50=None, p95=None, p99=None)
        unmarked = answer(monkeypatch, tiers=True, **params)
    p95 = {(r["timestamp"], r["service"]): r["p95"] for r in marked["data"]}
    assert p95[("2026-01-15T10:00:00Z", "api")] == -1.0
    assert p95[("2026-01-15T10:00:00Z", "auth")] != -1.0
    assert_same_answer(unmarked, merged)
