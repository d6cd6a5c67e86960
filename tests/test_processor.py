"""The alert lifecycle, driven through metrics.alerts.rules.evaluate directly (no HTTP).

Points carry literal timestamps (T0 + n seconds), so the seconds-based hysteresis
is tested without any clock at all.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from metrics.alerts.rules import evaluate, rules, series_status
from metrics.models import Alert, AlertRule
from metrics.points import Row

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)


def row(value: float, at: float = 0, service: str = "api", metric_type: str = "latency") -> Row:
    return Row(T0 + timedelta(seconds=at), service, metric_type, float(value), {})


@pytest.fixture
def resolve_after(telemetry):
    """Hysteresis knobs for a test: resolve_after(points=3, seconds=30)."""

    def patch(points: int = 1, seconds: int = 0):
        telemetry(ALERT_RESOLVE_POINTS=points, ALERT_RESOLVE_SECONDS=seconds)

    return patch


def test_a_healthy_point_opens_nothing():
    outcome = evaluate([row(100)])
    assert outcome.breached == [] and outcome.changed == []
    assert Alert.objects.count() == 0


def test_a_breach_opens_one_warning_alert_with_its_fields():
    outcome = evaluate([row(600, at=5)])
    alert = Alert.objects.get()
    assert outcome.breached == [alert] and outcome.changed == [alert]
    assert (alert.service, alert.metric_type, alert.severity, alert.state) == ("api", "latency", "warning", "firing")
    assert alert.value == alert.latest_value == 600
    assert alert.threshold == 500
    assert alert.started_at == alert.last_breach_at == T0 + timedelta(seconds=5)
    assert alert.breach_count == 1 and alert.resolved_at is None
    assert alert.message == "api latency 600 ms above warning threshold 500 ms"


def test_a_critical_breach_opens_a_critical_alert():
    evaluate([row(1500)])
    alert = Alert.objects.get()
    assert alert.severity == "critical" and alert.threshold == 1000


def test_more_breaches_update_the_firing_alert_instead_of_duplicating_it():
    evaluate([row(600, at=0)])
    outcome = evaluate([row(700, at=1), row(650, at=2)])
    alert = Alert.objects.get()
    assert outcome.breached == [alert]
    assert outcome.changed == []  # an update is not a state change worth broadcasting
    assert alert.breach_count == 3
    assert alert.value == 600 and alert.latest_value == 650
    assert alert.last_breach_at == T0 + timedelta(seconds=2)


def test_a_critical_breach_escalates_a_warning_alert():
    evaluate([row(600, at=0)])
    outcome = evaluate([row(1200, at=1)])
    alert = Alert.objects.get()
    assert outcome.changed == [alert]
    assert alert.severity == "critical" and alert.threshold == 1000
    assert "critical" in alert.message
    assert alert.value == 600  # the value that opened it stays


def test_a_warning_breach_does_not_downgrade_a_critical_alert():
    evaluate([row(1200, at=0)])
    evaluate([row(600, at=1)])
    assert Alert.objects.get().severity == "critical"


def test_one_healthy_point_does_not_resolve_with_point_hysteresis(resolve_after):
    resolve_after(points=3, seconds=0)
    evaluate([row(600, at=0)])
    evaluate([row(100, at=1), row(100, at=2)])
    alert = Alert.objects.get()
    assert alert.state == "firing"
    outcome = evaluate([row(100, at=3)])
    alert.refresh_from_db()
    assert alert.state == "resolved" and alert.resolved_at == T0 + timedelta(seconds=3)
    assert outcome.changed == [alert] and outcome.breached == []


def test_a_breach_in_between_restarts_the_healthy_count(resolve_after):
    resolve_after(points=3, seconds=0)
    evaluate([row(600, at=0), row(100, at=1), row(100, at=2), row(600, at=3), row(100, at=4), row(100, at=5)])
    assert Alert.objects.get().state == "firing"
    evaluate([row(100, at=6)])
    assert Alert.objects.get().state == "resolved"


def test_it_resolves_only_after_the_seconds_of_hysteresis(resolve_after):
    resolve_after(points=1, seconds=30)
    evaluate([row(600, at=0)])
    evaluate([row(100, at=10), row(100, at=29)])
    assert Alert.objects.get().state == "firing"
    evaluate([row(100, at=30)])
    alert = Alert.objects.get()
    assert alert.state == "resolved" and alert.resolved_at == T0 + timedelta(seconds=30)


def test_points_and_seconds_must_both_be_satisfied(resolve_after):
    resolve_after(points=3, seconds=30)
    evaluate([row(600, at=0), row(100, at=31)])  # old enough, but one point
    assert Alert.objects.get().state == "firing"
    evaluate([row(100, at=1 + 31), row(100, at=2 + 31)])
    assert Alert.objects.get().state == "resolved"


def test_a_breach_after_resolution_opens_a_new_alert_and_keeps_the_old_one(resolve_after):
    resolve_after(points=1)
    evaluate([row(600, at=0), row(100, at=1)])
    outcome = evaluate([row(800, at=2)])
    old, new = Alert.objects.order_by("id")
    assert old.state == "resolved" and new.state == "firing"
    assert new.value == 800 and new.started_at == T0 + timedelta(seconds=2)
    assert outcome.breached == [new] and outcome.changed == [new]


def test_open_resolve_reopen_inside_one_batch(resolve_after):
    resolve_after(points=1)
    outcome = evaluate([row(600, at=0), row(100, at=1), row(700, at=2)])
    assert list(Alert.objects.order_by("id").values_list("state", flat=True)) == ["resolved", "firing"]
    assert outcome.breached == [Alert.objects.get(state="firing")]
    assert len(outcome.changed) == 2


def test_points_of_a_batch_are_applied_in_timestamp_order(resolve_after):
    resolve_after(points=1)
    # Sent out of order: the breach at t=0 comes before the healthy point at t=1.
    evaluate([row(100, at=1), row(600, at=0)])
    assert Alert.objects.get().state == "resolved"


def test_late_healthy_points_from_before_the_last_breach_do_not_count_toward_resolution(resolve_after):
    resolve_after(points=3, seconds=30)
    evaluate([row(600, at=100)])
    # History arriving after the breach, dated before it: no recovery since.
    evaluate([row(100, at=70), row(100, at=80), row(100, at=90)])
    alert = Alert.objects.get()
    assert (alert.healthy_count, alert.latest_value) == (0, 600)
    evaluate([row(100, at=140)])
    assert Alert.objects.get().state == "firing"  # one healthy point since the breach, not four
    evaluate([row(100, at=141), row(100, at=142)])
    alert = Alert.objects.get()
    assert alert.state == "resolved" and alert.resolved_at == T0 + timedelta(seconds=142)


def test_a_late_breach_keeps_the_newer_value_and_the_healthy_count(resolve_after):
    resolve_after(points=2, seconds=0)
    evaluate([row(600, at=0), row(700, at=10), row(100, at=20)])
    evaluate([row(650, at=5)])  # late: older than the last breach at t=10
    alert = Alert.objects.get()
    assert (alert.breach_count, alert.latest_value, alert.healthy_count) == (3, 100, 1)
    assert alert.last_breach_at == T0 + timedelta(seconds=10)
    evaluate([row(100, at=21)])
    alert = Alert.objects.get()
    assert alert.state == "resolved" and alert.resolved_at == T0 + timedelta(seconds=21)


def test_alert_times_are_the_points_times_not_the_processing_time(resolve_after):
    """History ingested today reads as it happened: started and resolved at its points' timestamps."""
    resolve_after(points=3, seconds=30)
    hours_ago = [row(1500, at=0), row(1200, at=10)] + [row(100, at=20 + 10 * n) for n in range(4)]
    evaluate(hours_ago)
    alert = Alert.objects.get()
    assert alert.started_at == T0
    assert alert.last_breach_at == T0 + timedelta(seconds=10)
    assert alert.resolved_at == T0 + timedelta(seconds=40)  # third healthy point, 30 s after the last breach


def test_there_is_at_most_one_firing_alert_per_series():
    evaluate([row(600, at=0), row(1200, at=1, service="auth"), row(90, at=1, metric_type="cpu")])
    evaluate([row(700, at=2), row(96, at=3, metric_type="cpu")])
    assert Alert.objects.firing().count() == 3
    assert set(Alert.objects.values_list("service", "metric_type")) == {
        ("api", "latency"),
        ("auth", "latency"),
        ("api", "cpu"),
    }


def test_each_series_is_independent(resolve_after):
    resolve_after(points=1)
    evaluate([row(600, service="api"), row(600, service="auth")])
    evaluate([row(100, at=1, service="api")])
    assert dict(Alert.objects.values_list("service", "state")) == {"api": "resolved", "auth": "firing"}


def test_throughput_alerts_when_it_drops_below_the_threshold():
    evaluate([row(150, metric_type="throughput")])
    assert Alert.objects.count() == 0
    evaluate([row(80, at=1, metric_type="throughput")])
    alert = Alert.objects.get()
    assert (alert.severity, alert.threshold, alert.direction) == ("warning", 100, "below")
    assert "below" in alert.message
    evaluate([row(20, at=2, metric_type="throughput")])
    alert.refresh_from_db()
    assert (alert.severity, alert.threshold) == ("critical", 50)


@pytest.mark.parametrize(
    ("metric_type", "healthy", "warning", "critical"),
    [("error_rate", 0.01, 0.07, 0.2), ("cpu", 50, 85, 99), ("memory", 50, 85, 99)],
)
def test_the_seeded_defaults_for_every_metric_type(metric_type, healthy, warning, critical):
    assert series_status("api", metric_type, healthy) == "healthy"
    assert series_status("api", metric_type, warning) == "warning"
    assert series_status("api", metric_type, critical) == "critical"
    assert series_status("api", metric_type, None) == "stale"


def test_a_per_service_rule_overrides_the_default():
    AlertRule.objects.create(metric_type="latency", service="database", warning=50, critical=100)
    evaluate([row(60, service="database"), row(60, service="api")])
    alert = Alert.objects.get()
    assert alert.service == "database" and alert.threshold == 50


def test_editing_the_default_rule_changes_thresholds():
    AlertRule.objects.filter(metric_type="latency", service="").update(warning=200, critical=400)
    rules.invalidate()
    evaluate([row(300)])
    assert Alert.objects.get().threshold == 200


def test_a_disabled_rule_never_alerts():
    AlertRule.objects.filter(metric_type="latency", service="").update(enabled=False)
    rules.invalidate()
    assert evaluate([row(5000)]).breached == []
    assert Alert.objects.count() == 0


def test_a_disabled_per_service_rule_only_silences_that_service():
    AlertRule.objects.create(metric_type="latency", service="batch", warning=1, critical=2, enabled=False)
    evaluate([row(5000, service="batch"), row(5000, service="api")])
    assert list(Alert.objects.values_list("service", flat=True)) == ["api"]


def test_environment_threshold_overrides_win_over_the_default_rows(telemetry):
    telemetry(THRESHOLD_OVERRIDES={"latency_warning": 300.0, "latency_critical": 350.0})
    rules.invalidate()
    evaluate([row(360)])
    alert = Alert.objects.get()
    assert (alert.severity, alert.threshold) == ("critical", 350)


def test_a_per_service_rule_wins_over_environment_overrides(telemetry):
    telemetry(THRESHOLD_OVERRIDES={"latency_warning": 300.0})
    AlertRule.objects.create(metric_type="latency", service="api", warning=900, critical=1000)
    evaluate([row(400)])
    assert Alert.objects.count() == 0


def test_the_database_refuses_a_second_firing_alert_for_a_series():
    from django.db import IntegrityError, transaction

    evaluate([row(600)])
    with pytest.raises(IntegrityError), transaction.atomic():
        Alert.objects.create(
            service="api",
            metric_type="latency",
            severity="warning",
            value=1,
            latest_value=1,
            threshold=1,
            message="dup",
            started_at=T0,
            last_breach_at=T0,
        )
    assert Alert.objects.count() == 1


def test_a_breach_racing_another_instance_joins_its_firing_alert(monkeypatch):
    """Another server opened the alert after this one read the firing set: join, never duplicate."""
    evaluate([row(600, at=0)])
    real_firing = Alert.objects.firing
    calls = []

    def stale_first_read():
        calls.append(1)
        return Alert.objects.none() if len(calls) == 1 else real_firing()

    monkeypatch.setattr(Alert.objects, "firing", stale_first_read)
    outcome = evaluate([row(1500, at=1)])
    alert = Alert.objects.get()
    assert outcome.breached == [alert]
    assert (alert.breach_count, alert.latest_value, alert.severity) == (2, 1500, "critical")
    assert "critical" in alert.message


def test_one_breaching_point_among_healthy_ones_opens_the_alert_at_that_point():
    evaluate([row(100, at=0), row(700, at=1), row(100, at=2)])
    alert = Alert.objects.get()
    assert (alert.value, alert.started_at) == (700, T0 + timedelta(seconds=1))


def test_one_low_throughput_point_among_healthy_ones_opens_the_below_alert():
    evaluate(
        [
            row(150, at=0, metric_type="throughput"),
            row(80, at=1, metric_type="throughput"),
            row(150, at=2, metric_type="throughput"),
        ]
    )
    alert = Alert.objects.get()
    assert (alert.direction, alert.value, alert.started_at) == ("below", 80, T0 + timedelta(seconds=1))
