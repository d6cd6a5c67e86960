"""Per-minute rollups: equal to raw, corrected by late points, merged for long ranges.

The clock is frozen at NOW (time-machine); points are written through the one
ingestion path (validate_points + store) so late-point corrections run as in
production.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from metrics.ingest.store import store
from metrics.ingest.validation import validate_points
from metrics.models import Point, Rollup, RollupState
from metrics.points import Row
from metrics.series import query, rollups, sketch

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]

NOW = datetime(2026, 1, 15, 12, 0, 30, tzinfo=UTC)
QS = (0.5, 0.95, 0.99)


def ingest(points: list[dict]) -> None:
    store(validate_points(points))


def rows_at(minute_start: datetime, values, service="api", metric_type="latency") -> list[Row]:
    n = len(values)
    return [
        Row(minute_start + timedelta(seconds=60 * i / n), service, metric_type, float(v), {})
        for i, v in enumerate(values)
    ]


def rollup_map() -> dict[tuple[str, str, datetime], Rollup]:
    return {(r.service, r.metric_type, r.minute): r for r in Rollup.objects.all()}


def test_roll_up_writes_one_row_per_series_minute_equal_to_raw():
    rng = np.random.default_rng(5)
    start = NOW.replace(second=0) - timedelta(minutes=10)
    expected = {}
    for m in range(10):
        minute = start + timedelta(minutes=m)
        for service, metric_type, values in (
            ("api", "latency", rng.lognormal(5, 0.7, 200)),
            ("auth", "cpu", rng.uniform(0, 100, 50)),
        ):
            store(rows_at(minute, values, service, metric_type))
            expected[(service, metric_type, minute)] = values
    written = rollups.roll_up()
    assert written == 20
    got = rollup_map()
    assert set(got) == set(expected)
    for key, values in expected.items():
        r = got[key]
        assert r.count == len(values)
        assert r.sum == pytest.approx(values.sum())
        assert (r.min, r.max) == (values.min(), values.max())
        estimates = sketch.quantiles(r.sketch, QS)
        assert np.allclose(estimates, np.quantile(values, QS), rtol=0.0101)


def test_roll_up_leaves_the_current_minute_to_raw_and_is_idempotent():
    ingest(
        [
            {"service": "api", "metric_type": "latency", "value": v, "timestamp": ts}
            for v, ts in (
                (100, "2026-01-15T11:59:10Z"),
                (200, "2026-01-15T12:00:10Z"),  # the current, incomplete minute
            )
        ]
    )
    assert rollups.roll_up() == 1
    assert RollupState.get().rolled_through == datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    assert list(Rollup.objects.values_list("minute", "count")) == [(datetime(2026, 1, 15, 11, 59, tzinfo=UTC), 1)]
    assert rollups.roll_up() == 0
    assert Rollup.objects.count() == 1


def test_roll_up_catches_up_across_many_chunks():
    first = NOW.replace(second=0) - timedelta(minutes=95)
    for m in range(0, 95, 7):
        store(rows_at(first + timedelta(minutes=m), [1.0, 2.0]))
    rollups.roll_up(chunk=timedelta(minutes=10))
    assert Rollup.objects.count() == len(range(0, 95, 7))
    assert RollupState.get().rolled_through == NOW.replace(second=0)


def test_a_late_point_recomputes_an_already_rolled_up_minute():
    minute = datetime(2026, 1, 15, 11, 50, tzinfo=UTC)
    store(rows_at(minute, [10.0, 20.0, 30.0]))
    rollups.roll_up()
    before = Rollup.objects.get(minute=minute)
    assert (before.count, before.max) == (3, 30.0)
    # A point for 11:50 arrives ten minutes late, after its minute was rolled up.
    ingest([{"service": "api", "metric_type": "latency", "value": 900, "timestamp": "2026-01-15T11:50:59Z"}])
    after = Rollup.objects.get(minute=minute)
    assert (after.count, after.sum, after.min, after.max) == (4, 960.0, 10.0, 900.0)
    assert sketch.count(after.sketch) == 4


def test_a_late_point_for_a_new_series_in_a_rolled_minute_gets_its_rollup():
    minute = datetime(2026, 1, 15, 11, 40, tzinfo=UTC)
    store(rows_at(minute, [1.0]))
    rollups.roll_up()
    ingest([{"service": "queue", "metric_type": "memory", "value": 40, "timestamp": "2026-01-15T11:40:20Z"}])
    assert Rollup.objects.get(service="queue").count == 1


def test_late_points_keep_rollup_answers_equal_to_raw_answers(telemetry):
    rng = np.random.default_rng(9)
    start = datetime(2026, 1, 15, 11, 30, tzinfo=UTC)
    for m in range(20):
        store(rows_at(start + timedelta(minutes=m), rng.lognormal(4, 0.5, 30)))
    rollups.roll_up()
    late = [
        {"service": "api", "metric_type": "latency", "value": float(v), "timestamp": f"2026-01-15T11:{31 + i:02d}:05Z"}
        for i, v in enumerate(rng.lognormal(6, 0.5, 10))
    ]
    ingest(late)
    spec = query.parse_query(
        {"start_time": "2026-01-15T11:30:00Z", "end_time": "2026-01-15T11:50:00Z", "aggregation": "5m"}
    )
    telemetry(QUERY_RAW_MAX_SECONDS=0)
    from_rollups = query.run(spec)
    telemetry(QUERY_RAW_MAX_SECONDS=3600)
    from_raw = query.run(spec)
    assert (from_rollups["source"], from_raw["source"]) == ("rollup", "raw")
    assert len(from_rollups["data"]) == len(from_raw["data"]) == 4
    for a, b in zip(from_rollups["data"], from_raw["data"], strict=True):
        assert a["timestamp"] == b["timestamp"] and a["count"] == b["count"]
        assert a["min"] == b["min"] and a["max"] == b["max"]
        assert a["avg"] == pytest.approx(b["avg"])
        for p in ("p50", "p95", "p99"):
            assert a[p] == pytest.approx(b[p], rel=0.0101)


def test_an_answer_from_rollups_has_no_hole_at_the_right_edge(telemetry):
    telemetry(QUERY_RAW_MAX_SECONDS=0)  # force the rollup path
    for m in range(5, 0, -1):
        store(rows_at(NOW.replace(second=0) - timedelta(minutes=m), [100.0] * 6))
    rollups.roll_up()
    # Points after the rollup boundary: the last complete minute is not yet
    # rolled (the scheduler has not run) and the current minute is in progress.
    ingest(
        [
            {"service": "api", "metric_type": "latency", "value": 300, "timestamp": "2026-01-15T12:00:05Z"},
            {"service": "api", "metric_type": "latency", "value": 500, "timestamp": "2026-01-15T12:00:20Z"},
        ]
    )
    spec = query.parse_query(
        {"start_time": "2026-01-15T11:50:00Z", "end_time": "2026-01-15T12:01:00Z", "aggregation": "1m"}
    )
    answer = query.run(spec)
    assert answer["source"] == "rollup"
    buckets = {row["timestamp"]: row for row in answer["data"]}
    assert list(buckets)[-1] == "2026-01-15T12:00:00Z"
    assert buckets["2026-01-15T12:00:00Z"]["count"] == 2
    assert buckets["2026-01-15T12:00:00Z"]["max"] == 500
    assert sum(row["count"] for row in answer["data"]) == Point.objects.count() == 32


def test_seven_days_from_merged_sketches_are_within_one_percent_of_exact():
    """Beyond the raw retention only rollups exist: the week's answer merges 10,080 minutes."""
    rng = np.random.default_rng(2024)
    start = NOW.replace(second=0) - timedelta(days=7)
    minutes = np.arange(7 * 1440)
    per_minute = 12
    # A daily cycle plus a long tail, so hours differ from each other.
    scale = 1 + 0.8 * np.sin(2 * np.pi * minutes / 1440)
    values = rng.lognormal(4, 0.6, (len(minutes), per_minute)) * scale[:, None]
    ts = start.timestamp() + np.repeat(minutes * 60.0, per_minute) + np.tile(np.arange(per_minute) * 5.0, len(minutes))
    n = ts.size
    summaries = rollups.summarise(
        np.array(["api"] * n, dtype=object), np.array(["latency"] * n, dtype=object), ts, values.ravel()
    )
    rollups._upsert(summaries)
    RollupState.objects.update_or_create(id=1, defaults={"rolled_through": NOW.replace(second=0)})
    assert Point.objects.count() == 0  # no raw points at all

    end = start + timedelta(days=7)
    spec = query.parse_query({"start_time": start.isoformat(), "end_time": end.isoformat(), "aggregation": "auto"})
    answer = query.run(spec)
    assert answer["source"] == "rollup"
    size = answer["bucket_seconds"]
    assert 150 <= 7 * 86400 / size <= 600
    bucket_of = ((ts - start.timestamp()) // size).astype(int)
    flat = values.ravel()
    assert len(answer["data"]) == bucket_of.max() + 1
    for i, row in enumerate(answer["data"]):
        exact = np.quantile(flat[bucket_of == i], QS)
        assert row["count"] == int((bucket_of == i).sum())
        assert np.allclose([row["p50"], row["p95"], row["p99"]], exact, rtol=0.0101), (i, row, exact)

    # The whole week as one answer: merge every minute's sketch.
    blobs = list(Rollup.objects.values_list("sketch", flat=True))
    week = sketch.grouped_quantiles(blobs, np.zeros(len(blobs), dtype=np.int64), 1, QS)[0]
    assert np.allclose(week, np.quantile(flat, QS), rtol=0.0101)
