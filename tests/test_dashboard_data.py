"""Chart data endpoints: one JSON shape per chart, driven by range and services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from metrics.ingest.store import store
from metrics.ingest.validation import validate_points
from metrics.series import rollups
from tests.support.clock import at

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
MS = 1000


@pytest.fixture
def ingest(frozen):
    def _ingest(*points: tuple[str, str, float, float]) -> None:
        store(
            validate_points(
                [{"service": s, "metric_type": m, "value": v, "timestamp": at(ago)} for s, m, v, ago in points]
            )
        )

    return _ingest


def get(client, path: str) -> dict:
    response = client.get(path)
    assert response.status_code == 200, response.content[:500]
    return response.json()


def series(body: dict, key: str) -> list[dict]:
    return next(d["data"] for d in body["datasets"] if d["key"] == key)


def test_percentiles_pool_the_selected_services_per_bucket_exactly(client, ingest):
    values = {"api": [10.0, 20.0, 30.0], "auth": [40.0, 50.0]}
    # All five points in the first second of one bucket, 10 minutes ago (bucket boundaries are round).
    ingest(*[(s, "latency", v, 10 - i / 600) for s, vs in values.items() for i, v in enumerate(vs)])
    body = get(client, "/dashboard/data/percentiles?metric_type=latency&range=1h")
    pooled = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    assert body["source"] == "raw" and 1 <= body["bucket_seconds"] <= 60
    assert [p["y"] for p in series(body, "p50")] == [pytest.approx(np.percentile(pooled, 50))]
    assert [p["y"] for p in series(body, "p99")] == [pytest.approx(np.percentile(pooled, 99))]
    assert body["points"] == 5
    only_api = get(client, "/dashboard/data/percentiles?metric_type=latency&range=1h&services=api")
    assert series(only_api, "p50")[0]["y"] == pytest.approx(20.0)
    assert body["thresholds"] == {"warning": 500.0, "critical": 1000.0, "direction": "above"}


def test_the_range_changes_what_is_queried(client, ingest):
    ingest(("api", "latency", 100.0, 30), ("api", "latency", 900.0, 180))
    hour = get(client, "/dashboard/data/percentiles?range=1h")
    six = get(client, "/dashboard/data/percentiles?range=6h")
    assert [p["y"] for p in series(hour, "p50")] == [100.0]
    assert sorted(p["y"] for p in series(six, "p50")) == [100.0, 900.0]
    assert six["end"] - six["start"] == 6 * 3600 * MS
    assert hour["start"] == int((NOW - timedelta(hours=1)).timestamp() * MS)


def test_long_ranges_come_from_rollups(client, ingest):
    ingest(*[("api", "latency", float(v), 120 + v / 100) for v in range(1, 101)])
    rollups.roll_up(NOW)
    body = get(client, "/dashboard/data/percentiles?range=24h")
    assert body["source"] == "rollup" and body["bucket_seconds"] >= 60
    (p95,) = series(body, "p95")
    assert p95["y"] == pytest.approx(np.percentile(np.arange(1, 101), 95), rel=0.01)
    week = get(client, "/dashboard/data/by-service?metric_type=latency&range=7d")
    assert week["source"] == "rollup" and week["bucket_seconds"] > body["bucket_seconds"]


def test_by_service_gives_one_stacked_series_per_service_with_counts(client, ingest):
    ingest(("api", "throughput", 300.0, 5), ("api", "throughput", 500.0, 4.999), ("auth", "throughput", 50.0, 5))
    body = get(client, "/dashboard/data/by-service?metric_type=throughput&range=15m")
    assert [d["key"] for d in body["datasets"]] == ["api", "auth"]
    assert series(body, "api") == [{"x": series(body, "api")[0]["x"], "y": 400.0, "c": 2}]
    assert series(body, "auth")[0]["y"] == 50.0
    assert body["thresholds"]["direction"] == "below"
    filtered = get(client, "/dashboard/data/by-service?metric_type=throughput&range=15m&services=auth")
    assert [d["key"] for d in filtered["datasets"]] == ["auth"]


def test_compare_averages_each_service_over_the_range(client, ingest):
    ingest(("api", "error_rate", 0.02, 5), ("api", "error_rate", 0.04, 6), ("auth", "error_rate", 0.001, 5))
    ingest(("api", "error_rate", 0.5, 120))  # outside the 1h range
    body = get(client, "/dashboard/data/compare?metric_type=error_rate&range=1h")
    assert body["bars"] == [
        {"service": "api", "sum": pytest.approx(0.06), "count": 2, "avg": pytest.approx(0.03)},
        {"service": "auth", "sum": 0.001, "count": 1, "avg": 0.001},
    ]
    assert body["thresholds"] == {"warning": 0.05, "critical": 0.1, "direction": "above"}


def test_alerts_in_the_range_are_marked_with_open_and_resolve_times(client, ingest, telemetry):
    telemetry(ALERT_RESOLVE_POINTS=1, ALERT_RESOLVE_SECONDS=0)
    ingest(("api", "latency", 1500.0, 20))
    ingest(("api", "latency", 100.0, 10))
    ingest(("auth", "latency", 700.0, 5))
    body = get(client, "/dashboard/data/percentiles?metric_type=latency&range=1h")
    marks = sorted(body["alerts"], key=lambda m: m["started"])
    assert [(m["service"], m["severity"], m["state"]) for m in marks] == [
        ("api", "critical", "resolved"),
        ("auth", "warning", "firing"),
    ]
    assert marks[0]["started"] == int((NOW - timedelta(minutes=20)).timestamp() * MS)
    assert marks[0]["resolved"] == int((NOW - timedelta(minutes=10)).timestamp() * MS)
    assert marks[1]["resolved"] is None
    assert get(client, "/dashboard/data/percentiles?metric_type=cpu&range=1h")["alerts"] == []
    assert len(get(client, "/dashboard/data/percentiles?range=1h&services=auth")["alerts"]) == 1


@pytest.mark.parametrize("path", ["percentiles", "by-service", "compare"])
def test_every_endpoint_answers_empty_data_without_points(client, frozen, path):
    body = get(client, f"/dashboard/data/{path}?range=15m")
    assert body["alerts"] == []
    # Each endpoint has its own chart shape; whichever it is must be present and empty.
    shape = "bars" if path == "compare" else "datasets"
    assert shape in body, body
    assert body[shape] == [] or all(d["data"] == [] for d in body[shape]), body


@pytest.mark.parametrize(
    ("query", "field"),
    [("range=3y", "range"), ("metric_type=bogus", "metric_type"), ("services=bad name", "services")],
)
def test_bad_parameters_answer_400_in_the_error_shape(client, frozen, query, field):
    response = client.get(f"/dashboard/data/percentiles?{query}")
    assert response.status_code == 400
    assert response.json()["details"][0]["field"] == field


def test_data_endpoints_answer_401_json_when_login_is_required(client, frozen, telemetry):
    telemetry(DASHBOARD_REQUIRE_LOGIN=True)
    response = client.get("/dashboard/data/percentiles")
    assert response.status_code == 401
    assert response.json()["details"][0]["field"] == "session"


def test_data_endpoints_only_answer_get(client, frozen):
    assert client.post("/dashboard/data/compare").status_code == 405


def test_the_current_bucket_comes_as_raw_values_for_the_page_to_keep_live(client, ingest):
    ingest(("api", "latency", 42.0, 0), ("api", "latency", 100.0, 30))
    body = get(client, "/dashboard/data/percentiles?range=1h")
    assert body["live"]["values"] == [42.0]
    assert body["live"]["x"] <= int(NOW.timestamp() * MS) < body["live"]["x"] + body["bucket_seconds"] * MS
    assert [p["y"] for p in series(body, "p50")] == [100.0]
    assert body["points"] == 2
