"""GET /metrics/services: one row per known service with its recent statistics and status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from metrics.ingest.store import store
from metrics.models import Service
from metrics.points import Row

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
URL = "/metrics/services"


def put(service: str, metric_type: str, values, ago_seconds: float = 60) -> None:
    start = NOW - timedelta(seconds=ago_seconds)
    store([Row(start + timedelta(seconds=i), service, metric_type, float(v), {}) for i, v in enumerate(values)])


def services(client) -> dict[str, dict]:
    response = client.get(URL)
    assert response.status_code == 200
    return {row["service"]: row for row in response.json()["services"]}


def test_no_services_is_an_empty_list(client):
    assert client.get(URL).json() == {"services": []}


def test_a_service_reports_its_recent_statistics(client):
    values = np.random.default_rng(4).lognormal(4, 0.4, 50)
    put("api", "latency", values)
    put("api", "cpu", [40, 42])
    row = services(client)["api"]
    assert row["status"] == "healthy"
    assert row["last_seen"] == "2026-11-28T11:59:49Z"  # the newest point of the 50
    latency = row["metrics"]["latency"]
    assert {"current", "avg", "p50", "p95", "p99", "min", "max"} <= set(latency)
    assert latency["current"] == pytest.approx(values[-1])
    assert latency["avg"] == pytest.approx(values.mean())
    assert [latency["p50"], latency["p95"], latency["p99"]] == pytest.approx(np.percentile(values, [50, 95, 99]))
    assert (latency["min"], latency["max"]) == (pytest.approx(values.min()), pytest.approx(values.max()))
    assert row["metrics"]["cpu"]["current"] == 42


def test_services_are_listed_by_name(client):
    for name in ("queue", "auth", "cache"):
        put(name, "cpu", [10])
    assert [row["service"] for row in client.get(URL).json()["services"]] == ["auth", "cache", "queue"]


def test_a_service_without_points_in_the_window_is_stale(client, telemetry):
    telemetry(SERVICE_WINDOW_SECONDS=300)
    put("old", "cpu", [10], ago_seconds=600)
    put("new", "cpu", [10], ago_seconds=60)
    rows = services(client)
    assert rows["old"]["status"] == "stale" and rows["old"]["metrics"] == {}
    assert rows["old"]["last_seen"] == "2026-11-28T11:50:00Z"
    assert rows["new"]["status"] == "healthy"


def test_a_warning_alert_makes_a_service_degraded_and_a_critical_one_unhealthy(client):
    put("api", "latency", [600])
    put("db", "cpu", [99])
    put("cache", "cpu", [10])
    rows = services(client)
    assert (rows["api"]["status"], rows["db"]["status"], rows["cache"]["status"]) == (
        "degraded",
        "unhealthy",
        "healthy",
    )


def test_listing_services_reads_the_service_table_not_points(client):
    Service.objects.create(name="registered", first_seen=NOW, last_seen=NOW)
    assert services(client)["registered"]["status"] == "stale"


def test_other_methods_are_405(client):
    assert client.post(URL).status_code == 405
