"""dashboard/data.py paths the chart endpoints take less often: what a redrawing chart relies on.

- the current bucket's raw values, sampled to MAX_LIVE_VALUES: the same data
  must give the same sample on every redraw (the chart must not jitter), and
  the sample keeps the percentiles the page computes from it;
- the alert marks, capped at MAX_ALERT_MARKS, newest first;
- the thresholds drawn: one service's own rule when one service is shown;
- a database that does not answer: 503 in the API error shape with Retry-After.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.db import OperationalError, connection

from dashboard import data
from metrics.ingest.store import store
from metrics.models import Alert, AlertRule
from metrics.points import Row

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
MS = 1000


def get(client, path: str) -> dict:
    response = client.get(path)
    assert response.status_code == 200, response.content[:500]
    return response.json()


# --- The live bucket's sample -------------------------------------------------------------


def test_the_live_sample_is_the_same_on_every_redraw_and_keeps_the_percentiles(client, frozen):
    n = data.MAX_LIVE_VALUES + 1000
    rng = np.random.default_rng(7)  # the data only; the sample itself must need no seed
    values = rng.lognormal(4.0, 0.8, n)
    store([Row(NOW, "api", "latency", float(v), {}) for v in values])
    first = get(client, "/dashboard/data/percentiles?metric_type=latency&range=1h")["live"]["values"]
    second = get(client, "/dashboard/data/percentiles?metric_type=latency&range=1h")["live"]["values"]
    assert len(first) == data.MAX_LIVE_VALUES
    assert sorted(first) == sorted(second)
    sample = np.array(first)
    assert sample.min() == values.min() and sample.max() == values.max()
    for q in (50, 95, 99):
        assert np.percentile(sample, q) == pytest.approx(np.percentile(values, q), rel=0.01)


def test_the_live_sample_does_not_depend_on_the_order_rows_arrive_in():
    values = np.arange(12_000, dtype=np.float64)
    shuffled = np.random.default_rng(1).permutation(values)
    assert data.live_sample(shuffled, 5000).tolist() == data.live_sample(values, 5000).tolist()
    assert len(set(data.live_sample(values, 5000).tolist())) == 5000  # no value taken twice
    assert data.live_sample(values[:10], 5000).tolist() == values[:10].tolist()  # under the cap: all of them


# --- Alert marks --------------------------------------------------------------------------


def test_alert_marks_are_capped_and_keep_the_newest(client, frozen):
    extra = 5
    total = data.MAX_ALERT_MARKS + extra
    Alert.objects.bulk_create(
        Alert(
            service="api",
            metric_type="latency",
            severity=Alert.WARNING,
            state=Alert.RESOLVED,
            value=600.0,
            latest_value=600.0,
            threshold=500.0,
            message="api latency",
            started_at=NOW - timedelta(minutes=50) + timedelta(seconds=10 * i),
            last_breach_at=NOW - timedelta(minutes=50) + timedelta(seconds=10 * i),
            resolved_at=NOW - timedelta(minutes=50) + timedelta(seconds=10 * i + 5),
        )
        for i in range(total)
    )
    marks = get(client, "/dashboard/data/percentiles?metric_type=latency&range=1h")["alerts"]
    assert len(marks) == data.MAX_ALERT_MARKS
    oldest_kept = NOW - timedelta(minutes=50) + timedelta(seconds=10 * extra)
    assert min(m["started"] for m in marks) == int(oldest_kept.timestamp() * MS)
    assert max(m["started"] for m in marks) == int(
        (NOW - timedelta(minutes=50) + timedelta(seconds=10 * (total - 1))).timestamp() * MS
    )


# --- Thresholds ---------------------------------------------------------------------------


def test_one_service_gets_its_own_thresholds_and_several_get_the_default(client, frozen):
    AlertRule.objects.create(metric_type="latency", service="api", warning=100.0, critical=250.0)
    default = get(client, "/dashboard/data/percentiles?metric_type=latency&range=1h")["thresholds"]
    own = get(client, "/dashboard/data/percentiles?metric_type=latency&range=1h&services=api")["thresholds"]
    other = get(client, "/dashboard/data/percentiles?metric_type=latency&range=1h&services=auth")["thresholds"]
    both = get(client, "/dashboard/data/by-service?metric_type=latency&range=1h&services=api,auth")["thresholds"]
    assert own == {"warning": 100.0, "critical": 250.0, "direction": "above"}
    assert default != own
    assert other == default and both == default


def test_a_service_whose_rule_is_disabled_gets_no_threshold_lines(client, frozen):
    AlertRule.objects.create(metric_type="cpu", service="batch", warning=1.0, critical=2.0, enabled=False)
    assert get(client, "/dashboard/data/compare?metric_type=cpu&range=1h&services=batch")["thresholds"] is None
    assert get(client, "/dashboard/data/compare?metric_type=cpu&range=1h")["thresholds"] is not None


# --- The database does not answer ------------------------------------------------------------


@pytest.mark.parametrize("path", ["percentiles", "by-service", "compare"])
def test_a_database_that_does_not_answer_is_503_with_retry_after(client, frozen, path):
    def refuse(execute, sql, params, many, context):
        raise OperationalError("database is locked")

    with connection.execute_wrapper(refuse):
        response = client.get(f"/dashboard/data/{path}?metric_type=latency&range=1h")
    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    body = response.json()
    assert body["details"][0]["field"] == "database"
    assert "Database unavailable: OperationalError" in body["error"]
