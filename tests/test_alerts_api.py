"""GET /metrics/alerts: newest first, filtered by severity, service, state; capped by limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from metrics.models import Alert

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
URL = "/metrics/alerts"


def make(minutes: int, service="api", severity="warning", state="firing", metric_type="latency") -> Alert:
    started = T0 + timedelta(minutes=minutes)
    return Alert.objects.create(
        service=service,
        metric_type=metric_type,
        severity=severity,
        state=state,
        value=600,
        latest_value=650,
        threshold=500,
        message=f"{service} {metric_type} 600 ms above warning threshold 500 ms",
        started_at=started,
        last_breach_at=started + timedelta(seconds=30),
        resolved_at=started + timedelta(minutes=2) if state == "resolved" else None,
        breach_count=4,
    )


@pytest.fixture
def history():
    return [
        make(0, service="api", state="resolved"),
        make(1, service="auth", severity="critical", metric_type="cpu"),
        make(2, service="api", severity="critical", state="resolved", metric_type="error_rate"),
        make(3, service="db"),
    ]


def alerts(client, **params) -> list[dict]:
    response = client.get(URL, params)
    assert response.status_code == 200, response.content
    return response.json()["alerts"]


def test_alerts_are_newest_first_with_every_field(client, history):
    rows = alerts(client)
    assert [r["id"] for r in rows] == [a.pk for a in reversed(history)]
    first = rows[0]
    assert first == {
        "id": history[3].pk,
        "kind": "threshold",
        "timestamp": "2026-11-28T12:03:30Z",
        "service": "db",
        "metric_type": "latency",
        "severity": "warning",
        "state": "firing",
        "message": "db latency 600 ms above warning threshold 500 ms",
        "value": 600.0,
        "latest_value": 650.0,
        "threshold": 500.0,
        "started_at": "2026-11-28T12:03:00Z",
        "last_breach_at": "2026-11-28T12:03:30Z",
        "resolved_at": None,
        "breach_count": 4,
        "acknowledged": False,
        "acknowledged_by": None,
        "acknowledged_at": None,
    }


def test_a_resolved_alert_carries_its_resolution_time(client, history):
    resolved = next(r for r in alerts(client) if r["id"] == history[0].pk)
    assert resolved["state"] == "resolved"
    assert resolved["resolved_at"] == resolved["timestamp"] == "2026-11-28T12:02:00Z"


def test_limit_caps_the_list_and_defaults_to_ten(client):
    for i in range(12):
        make(i, service=f"s{i}")
    assert len(alerts(client)) == 10
    assert [r["service"] for r in alerts(client, limit=2)] == ["s11", "s10"]


def test_it_filters_by_severity_service_and_state(client, history):
    assert [r["id"] for r in alerts(client, severity="critical")] == [history[2].pk, history[1].pk]
    assert [r["id"] for r in alerts(client, service="api")] == [history[2].pk, history[0].pk]
    assert [r["id"] for r in alerts(client, state="firing")] == [history[3].pk, history[1].pk]
    assert [r["id"] for r in alerts(client, service="api", state="resolved", severity="warning")] == [history[0].pk]
    assert alerts(client, service="nobody") == []


def test_empty_filters_mean_no_filter(client, history):
    assert len(alerts(client, severity="", service="", state="")) == 4


def test_acknowledgement_is_reported(client, history):
    history[3].acknowledge("alice")
    first = alerts(client)[0]
    assert first["acknowledged"] is True and first["acknowledged_by"] == "alice"
    assert first["acknowledged_at"].endswith("Z")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"severity": "info"}, "severity"),
        ({"state": "open"}, "state"),
        ({"limit": "abc"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"limit": "-3"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "2.5"}, "limit"),
    ],
)
def test_bad_filters_are_400_naming_the_field(client, params, field):
    response = client.get(URL, params)
    assert response.status_code == 400
    assert any(d["field"] == field for d in response.json()["details"])


def test_other_methods_are_405(client):
    response = client.post(URL)
    assert response.status_code == 405 and response["Allow"] == "GET"
