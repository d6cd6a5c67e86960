"""Late and out-of-order data: a point for a minute already rolled up corrects that rollup.

Time is frozen at a literal instant; points go through the HTTP API (the one
write path), the rollup boundary is advanced with roll_up(), then late points
arrive in reverse order. The long-range (rollup) answer must then match the
raw answer: count, min and max exactly, percentiles within the sketch's 1%.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from metrics.models import Rollup
from metrics.series import query, rollups

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 28, 12, 0, 30, tzinfo=UTC)
MINUTE = datetime(2026, 11, 28, 11, 50, tzinfo=UTC)


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _post(client, points: list[dict]) -> None:
    response = client.post("/metrics/ingest", points, content_type="application/json")
    assert response.status_code == 200, response.content


def _points(service: str, minute: datetime, values: list[float]) -> list[dict]:
    return [
        {
            "timestamp": _iso(minute + timedelta(seconds=(i * 7) % 60)),
            "service": service,
            "metric_type": "latency",
            "value": v,
        }
        for i, v in enumerate(values)
    ]


def _answer(exact: bool, service: str) -> list[dict]:
    spec = query.parse_query(
        {
            "start_time": _iso(MINUTE - timedelta(minutes=5)),
            "end_time": _iso(NOW),
            "services": [service],
            "aggregation": "1m",
            "exact": exact,
        },
        now=NOW,
    )
    result = query.run(spec, now=NOW)
    assert result["source"] == ("raw" if exact else "rollup")
    return result["data"]


def _assert_rollup_matches_raw(service: str) -> None:
    raw = {row["timestamp"]: row for row in _answer(True, service)}
    rolled = {row["timestamp"]: row for row in _answer(False, service)}
    assert raw.keys() == rolled.keys()
    for ts, exact in raw.items():
        approx = rolled[ts]
        assert (approx["count"], approx["min"], approx["max"]) == (exact["count"], exact["min"], exact["max"])
        assert approx["avg"] == pytest.approx(exact["avg"], rel=1e-9)
        for p in ("p50", "p95", "p99"):
            # The promise (metrics/series/sketch.py RELATIVE_ACCURACY): within 1 %, with room only for rounding.
            assert approx[p] == pytest.approx(exact[p], rel=0.01 + 1e-9), (ts, p)


@pytest.fixture
def rollup_answers(frozen, telemetry):
    """The clock at NOW, and rollup answers for this short range unless `exact` asks for raw."""
    telemetry(QUERY_RAW_MAX_SECONDS=0)


def test_a_late_point_updates_count_min_max_and_sketch_of_a_rolled_up_minute(client, rollup_answers):
    rng = random.Random(8)
    on_time = [rng.lognormvariate(4, 0.5) for _ in range(300)]
    _post(client, _points("api", MINUTE, on_time))
    _post(client, _points("api", MINUTE + timedelta(minutes=1), on_time[:50]))
    rollups.roll_up(NOW)
    assert rollups.rolled_through() == datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    before = Rollup.objects.get(service="api", metric_type="latency", minute=MINUTE)
    assert before.count == 300

    late = [0.5, 5000.0] + [rng.lognormvariate(6, 0.3) for _ in range(200)]
    # Out of order: newest timestamps first, spread over separate requests.
    late_points = sorted(_points("api", MINUTE, late), key=lambda p: p["timestamp"], reverse=True)
    for i in range(0, len(late_points), 40):
        _post(client, late_points[i : i + 40])

    after = Rollup.objects.get(service="api", metric_type="latency", minute=MINUTE)
    assert after.count == 502
    assert after.min == 0.5
    assert after.max == 5000.0
    assert after.sketch != before.sketch
    assert Rollup.objects.get(service="api", metric_type="latency", minute=MINUTE + timedelta(minutes=1)).count == 50
    _assert_rollup_matches_raw("api")


def test_a_late_point_for_a_rolled_up_minute_without_a_rollup_row_creates_it(client, rollup_answers):
    _post(client, _points("api", MINUTE, [10.0, 20.0]))
    rollups.roll_up(NOW)
    assert not Rollup.objects.filter(service="cache").exists()

    _post(client, _points("cache", MINUTE + timedelta(minutes=3), [3.0, 1.0, 2.0]))

    created = Rollup.objects.get(service="cache", metric_type="latency", minute=MINUTE + timedelta(minutes=3))
    assert (created.count, created.min, created.max) == (3, 1.0, 3.0)
    _assert_rollup_matches_raw("cache")
