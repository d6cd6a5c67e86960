"""The expected band on a service's chart: /dashboard/data/percentiles with one service."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from metrics.models import AlertRule, Rollup

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def three_hours_of_rollups(frozen):
    """api latency at 100 +- 2 ms every minute of the last three hours."""
    Rollup.objects.bulk_create(
        Rollup(
            service="api",
            metric_type="latency",
            minute=NOW - timedelta(minutes=n),
            count=10,
            sum=(98.0 if n % 2 else 102.0) * 10,
            min=98.0,
            max=102.0,
            sketch=b"",
        )
        for n in range(1, 181)
    )


def test_one_services_chart_carries_the_expected_band(client, three_hours_of_rollups):
    AlertRule.objects.update_or_create(
        metric_type="latency", service="", defaults={"warning": 500, "critical": 1000, "anomaly": True, "anomaly_k": 4}
    )
    body = client.get("/dashboard/data/percentiles?metric_type=latency&range=1h&services=api").json()
    band = body["expected"]
    assert band["k"] == 4 and band["statistic"] == "mean per minute"
    assert len(band["data"]) >= 55  # one point per minute of the hour
    point = band["data"][-1]
    # Trailing baseline (no past days): median 100, MAD floored at 3 % of it -> 100 +- 4 * 3 / 0.6745.
    assert point["median"] == pytest.approx(100.0)
    assert point["lo"] == pytest.approx(100 - 4 * 3 / 0.6745)
    assert point["y"] == pytest.approx(100 + 4 * 3 / 0.6745)


def test_a_pooled_chart_of_several_services_has_no_band(client, three_hours_of_rollups):
    body = client.get("/dashboard/data/percentiles?metric_type=latency&range=1h").json()
    assert "expected" not in body


def test_a_series_without_rollups_has_no_band(client, three_hours_of_rollups):
    body = client.get("/dashboard/data/percentiles?metric_type=cpu&range=1h&services=api").json()
    assert body["expected"] is None
