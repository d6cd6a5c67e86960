"""Anomaly alerts end to end on the database: rollups -> evaluate() -> Alert rows.

Rollups are written directly with literal minutes (T0 = 2026-01-15 12:00 UTC)
and the rollup boundary (RollupState.rolled_through) is moved by hand, which is
all the maintenance runner's evaluation reads.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from metrics.alerts import anomaly
from metrics.alerts.rules import evaluate as evaluate_thresholds
from metrics.models import Alert, AlertRule, Rollup, RollupState
from metrics.points import Row

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def minute(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


def rollup(n: int, mean: float, service: str = "api", metric_type: str = "latency", count: int = 10) -> None:
    Rollup.objects.update_or_create(
        service=service,
        metric_type=metric_type,
        minute=minute(n),
        defaults={"count": count, "sum": mean * count, "min": mean, "max": mean, "sketch": b""},
    )


def rolled_through(n: int) -> None:
    RollupState.objects.update_or_create(id=1, defaults={"rolled_through": minute(n)})


@pytest.fixture(autouse=True)
def anomaly_rule():
    anomaly.reset()
    AlertRule.objects.update_or_create(
        metric_type="latency", service="", defaults={"warning": 500, "critical": 1000, "anomaly": True}
    )
    yield
    anomaly.reset()


@pytest.fixture
def normal_hour():
    """An hour of ordinary latency (about 100 ms) before T0: the trailing baseline."""
    for n in range(-60, 0):
        rollup(n, 100 + (n % 5) - 2)


def step_to(n: int) -> anomaly.EvaluationReport:
    """Complete minute n-1 and run the runner's evaluation, as it does once a minute."""
    rolled_through(n)
    return anomaly.evaluate()


def test_a_sustained_spike_opens_an_anomaly_alert_then_it_resolves_with_hysteresis(normal_hour):
    step_to(0)
    for n in range(3):
        rollup(n, 400)
    step_to(1)
    step_to(2)
    assert not Alert.objects.exists()  # two unusual minutes: not yet
    report = step_to(3)
    alert = Alert.objects.get()
    assert report.opened == 1
    assert (alert.kind, alert.state, alert.service, alert.metric_type) == ("anomaly", "firing", "api", "latency")
    assert alert.started_at == minute(0) and alert.last_breach_at == minute(2)
    assert alert.value == 400 and alert.direction == "above" and alert.breach_count == 3
    assert alert.message.startswith("api latency 400 ms unusual: expected ")
    assert alert.to_dict()["kind"] == "anomaly"

    calm = anomaly.METHOD.resolve_minutes
    for n in range(3, 3 + calm):
        rollup(n, 100)
    for n in range(4, 3 + calm):
        step_to(n)
        assert Alert.objects.get().state == "firing"  # fewer than resolve_minutes calm minutes
    step_to(3 + calm)
    alert.refresh_from_db()
    assert alert.state == "resolved" and alert.resolved_at == minute(3 + calm)


def test_evaluating_the_same_minutes_again_changes_nothing(normal_hour):
    for n in range(4):
        rollup(n, 400)
    anomaly.evaluate_minutes(anomaly._minute_number(minute(0)), anomaly._minute_number(minute(3)))
    before = Alert.objects.get()
    anomaly.evaluate_minutes(anomaly._minute_number(minute(0)), anomaly._minute_number(minute(3)))
    after = Alert.objects.get()
    assert after.breach_count == before.breach_count == 4
    assert after.last_breach_at == minute(3)


def test_a_series_whose_rule_has_no_anomaly_toggle_is_not_evaluated(normal_hour):
    AlertRule.objects.filter(metric_type="latency").update(anomaly=False)
    for n in range(4):
        rollup(n, 400)
    step_to(0)
    for n in range(1, 5):
        step_to(n)
    assert not Alert.objects.exists()


def test_a_per_service_rule_overrides_k_and_minutes(normal_hour):
    AlertRule.objects.create(
        metric_type="latency", service="api", warning=500, critical=1000, anomaly=True, anomaly_minutes=1
    )
    rollup(0, 400)
    step_to(0)
    step_to(1)
    assert Alert.objects.get().kind == "anomaly"


def test_a_threshold_alert_and_an_anomaly_alert_fire_together_for_one_series(normal_hour):
    for n in range(3):
        rollup(n, 800)
    anomaly.evaluate_minutes(anomaly._minute_number(minute(0)), anomaly._minute_number(minute(2)))
    evaluate_thresholds([Row(minute(3), "api", "latency", 800.0, {})])
    evaluate_thresholds([Row(minute(3) + timedelta(seconds=5), "api", "latency", 900.0, {})])
    firing = {a.kind: a for a in Alert.objects.firing()}
    assert set(firing) == {"threshold", "anomaly"}
    # The breaches updated the threshold alert only.
    assert firing["threshold"].breach_count == 2 and firing["anomaly"].breach_count == 3


def test_each_run_reads_only_the_new_minutes_and_past_days_once_per_hour(normal_hour):
    for n in range(-60, 50):  # three past days at the same time of day: the seasonal baseline serves
        for day in (1, 2, 3):
            rollup(n - day * anomaly.DAY, 100 + (n % 5) - 2)
    for n in range(0, 40):
        rollup(n, 100 + (n % 5) - 2)
    step_to(0)
    refreshes, rows = anomaly._caches.season.refreshes, anomaly._caches.recent.rows_read
    assert refreshes == 2  # minute 11:59 reads back to 10:45: the hours 10:00 and 11:00
    for n in range(1, 40):
        step_to(n)
    assert anomaly._caches.season.refreshes == refreshes + 1  # 12:00, once
    # Each later run re-read the last RECENT_REFRESH minutes of the one series, not its past.
    assert anomaly._caches.recent.rows_read - rows <= 39 * anomaly.RECENT_REFRESH
    assert not Alert.objects.exists()
    rollup(40, 400)
    rollup(41, 400)
    rollup(42, 400)
    step_to(43)
    alert = Alert.objects.get()
    assert alert.started_at == minute(40) and "(same time on past days)" in alert.message


def test_a_firing_series_that_stops_reporting_resolves(normal_hour):
    for n in range(3):
        rollup(n, 400)
    step_to(3)
    assert Alert.objects.get().state == "firing"
    calm = anomaly.METHOD.resolve_minutes
    step_to(200)  # long silence: the series left the recent window entirely
    anomaly.reset()
    for n in range(201, 203 + calm):
        step_to(n)
    assert Alert.objects.get().state == "resolved"


def test_the_maintenance_runner_evaluates_after_each_roll_up(monkeypatch, telemetry):
    from metrics.maintenance import retention
    from metrics.maintenance.runner import Scheduler
    from metrics.series import rollups

    telemetry(ROLLUP_INTERVAL_SECONDS=15, PRUNE_INTERVAL_SECONDS=600)
    log: list[str] = []
    monkeypatch.setattr(retention, "prune", lambda: log.append("prune") or retention.PruneReport())
    monkeypatch.setattr(rollups, "roll_up", lambda: log.append("roll_up"))
    monkeypatch.setattr(anomaly, "evaluate", lambda: log.append("anomaly"))
    s = Scheduler()
    for t in (1000, 1015, 1030):
        s.tick(float(t))
    assert log == ["prune", "roll_up", "anomaly", "roll_up", "anomaly"]


def test_an_anomaly_alert_opening_and_resolving_writes_notifications(normal_hour):
    from metrics.alerts.models import ContactPoint, Notification

    ContactPoint.objects.create(name="oncall", destination="json://127.0.0.1:9/hook")
    for n in range(3):
        rollup(n, 400)
    for n in range(4):
        step_to(n)
    opened = Notification.objects.get()
    assert opened.status == Notification.OPEN
    assert [a.kind for a in opened.alerts.all()] == ["anomaly"]
    Notification.objects.update(state=Notification.SENT)  # delivered; a later change is a new message

    calm = anomaly.METHOD.resolve_minutes
    for n in range(3, 3 + calm):
        rollup(n, 100)
    for n in range(4, 4 + calm):
        step_to(n)
    assert Alert.objects.get().state == "resolved"
    assert set(Notification.objects.values_list("status", flat=True)) == {Notification.OPEN, Notification.RESOLVE}
