"""Threshold alerting: plain Python, no HTTP, called inside the ingest transaction.

Lifecycle per (service, metric_type) series:
- a breach opens one alert (unique while firing, enforced by the database);
- further breaches update it (latest value, count, warning -> critical);
- it resolves once the series has been healthy for ALERT_RESOLVE_POINTS
  consecutive points and ALERT_RESOLVE_SECONDS since the last breach
  (hysteresis, so a flapping series does not page twice a minute);
- every time is a point's own timestamp, never the time of processing: an
  alert starts at its first breaching point and resolves at the point that
  completes the hysteresis, so history ingested late reads as it happened;
- a breach after that opens a new alert. Resolved alerts stay as history.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction

from metrics.alerts import notify
from metrics.kinds import KINDS
from metrics.models import Alert, AlertRule
from metrics.points import Row


@dataclass(frozen=True, slots=True)
class Threshold:
    warning: float
    critical: float
    direction: str

    def severity(self, value: float) -> str | None:
        if self.direction == AlertRule.BELOW:
            if value < self.critical:
                return Alert.CRITICAL
            if value < self.warning:
                return Alert.WARNING
            return None
        if value > self.critical:
            return Alert.CRITICAL
        if value > self.warning:
            return Alert.WARNING
        return None

    def limit(self, severity: str) -> float:
        return self.critical if severity == Alert.CRITICAL else self.warning

    def status(self, value: float | None) -> str:
        if value is None:
            return "stale"
        return self.severity(value) or "healthy"


class RuleBook:
    """Alert rules cached in process; reloaded every few seconds or when a rule is saved."""

    TTL = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded_at = 0.0
        self._defaults: dict[str, Threshold] = {}
        self._overrides: dict[tuple[str, str], Threshold] = {}

    def invalidate(self) -> None:
        self._loaded_at = 0.0

    def _load(self) -> None:
        overrides_env = settings.TELEMETRY["THRESHOLD_OVERRIDES"]
        defaults: dict[str, Threshold] = {}
        for metric_type, kind in KINDS.items():
            defaults[metric_type] = Threshold(kind.warning, kind.critical, kind.direction)
        overrides: dict[tuple[str, str], Threshold] = {}
        disabled: set[tuple[str, str]] = set()
        for rule in AlertRule.objects.all():
            threshold = Threshold(rule.warning, rule.critical, rule.direction)
            if not rule.enabled:
                disabled.add((rule.metric_type, rule.service))
            elif rule.service:
                overrides[(rule.service, rule.metric_type)] = threshold
            else:
                defaults[rule.metric_type] = threshold
        # Environment overrides (THRESHOLD_LATENCY_WARNING=300) are deploy-time
        # configuration and win over the default rows; per-service rows win over both.
        for metric_type, base in list(defaults.items()):
            warning = overrides_env.get(f"{metric_type}_warning", base.warning)
            critical = overrides_env.get(f"{metric_type}_critical", base.critical)
            defaults[metric_type] = Threshold(warning, critical, base.direction)
        for metric_type, service in disabled:
            if service:
                overrides[(service, metric_type)] = Threshold(float("inf"), float("inf"), "off")
            else:
                defaults[metric_type] = Threshold(float("inf"), float("inf"), "off")
        self._defaults, self._overrides = defaults, overrides
        self._loaded_at = time.monotonic()

    def get(self, service: str, metric_type: str) -> Threshold:
        if time.monotonic() - self._loaded_at > self.TTL:
            with self._lock:
                if time.monotonic() - self._loaded_at > self.TTL:
                    self._load()
        return self._overrides.get((service, metric_type)) or self._defaults[metric_type]


rules = RuleBook()


def _disabled(threshold: Threshold) -> bool:
    return threshold.direction == "off"


def format_message(service: str, metric_type: str, severity: str, value: float, threshold: Threshold) -> str:
    limit = threshold.limit(severity)
    word = "below" if threshold.direction == AlertRule.BELOW else "above"
    unit = KINDS[metric_type].suffix
    return f"{service} {metric_type} {value:g}{unit} {word} {severity} threshold {limit:g}{unit}"


@dataclass
class AlertOutcome:
    breached: list[Alert] = field(default_factory=list)  # alerts a point of this request breached
    changed: list[Alert] = field(default_factory=list)  # opened, escalated or resolved: broadcast these


def evaluate(rows: Iterable[Row]) -> AlertOutcome:
    """Apply a batch of accepted rows to the alert state. Call inside a transaction."""
    conf = settings.TELEMETRY
    resolve_points = conf["ALERT_RESOLVE_POINTS"]
    resolve_after = timedelta(seconds=conf["ALERT_RESOLVE_SECONDS"])

    by_series: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        by_series[(row.service, row.metric_type)].append(row)

    # Decide which series matter before touching the database: a series needs
    # work if any point breaches, or if it may have a firing alert to update.
    # A series breaches iff its most extreme value does (severity is monotone
    # in the value), so the common healthy batch is judged on one value per
    # series; every point is graded below as soon as there is work to do.
    thresholds: dict[tuple[str, str], Threshold] = {}
    any_breach = False
    for key, series_rows in by_series.items():
        threshold = rules.get(*key)
        if _disabled(threshold):
            continue
        thresholds[key] = threshold
        if not any_breach:
            values = [r.value for r in series_rows]
            extreme = min(values) if threshold.direction == AlertRule.BELOW else max(values)
            any_breach = threshold.severity(extreme) is not None

    outcome = AlertOutcome()
    if not thresholds:
        return outcome
    services = {service for service, _ in thresholds}
    if not any_breach and not _any_firing(services):
        # The common case (healthy points, nothing firing) costs one indexed
        # plain-SQL probe instead of an ORM query with row locks.
        return outcome
    interesting: dict[tuple[str, str], tuple[Threshold, list[tuple[Row, str | None]]]] = {}
    for key, threshold in thresholds.items():
        series_rows = by_series[key]
        series_rows.sort(key=lambda r: r.timestamp)
        interesting[key] = (threshold, [(r, threshold.severity(r.value)) for r in series_rows])
    firing_qs = Alert.objects.firing().filter(kind=Alert.THRESHOLD, service__in=services)
    # Row locks serialise two instances updating the same alert (PostgreSQL);
    # SQLite's IMMEDIATE transactions already serialise writers.
    firing = {(a.service, a.metric_type): a for a in firing_qs.select_for_update().order_by("id")}
    if not firing and not any_breach:
        return outcome

    dirty: list[Alert] = []
    for key, (threshold, graded) in interesting.items():
        alert = firing.get(key)
        if alert is None and not any(sev for _, sev in graded):
            continue
        breached, changed, updated = _apply_series(alert, key, threshold, graded, resolve_points, resolve_after)
        if breached is not None:
            outcome.breached.append(breached)
        outcome.changed.extend(changed)
        dirty.extend(updated)
    _save_alerts(dirty)
    notify.enqueue(outcome.changed, known_ids={a.pk for a in firing.values()})  # outbox, same transaction
    return outcome


# What a breach, a healthy point or a resolution can change on an existing alert.
_MUTABLE_FIELDS = (
    "severity",
    "state",
    "latest_value",
    "threshold",
    "message",
    "last_breach_at",
    "resolved_at",
    "breach_count",
    "healthy_count",
)


def _save_alerts(alerts: list[Alert]) -> None:
    """Write every alert this batch touched in one executemany.

    During an incident most points of a batch update a firing alert; a
    Model.save() each (an ORM UPDATE of every column) was a third of the
    ingest writer's time in the soak's profile (docs/performance.md).
    """
    if not alerts:
        return
    adapt = connection.ops.adapt_datetimefield_value
    table = connection.ops.quote_name(Alert._meta.db_table)
    assignments = ", ".join(f"{connection.ops.quote_name(name)} = %s" for name in _MUTABLE_FIELDS)
    params = [
        (
            a.severity,
            a.state,
            a.latest_value,
            a.threshold,
            a.message,
            adapt(a.last_breach_at),
            adapt(a.resolved_at),
            a.breach_count,
            a.healthy_count,
            a.pk,
        )
        for a in alerts
    ]
    with connection.cursor() as cur:
        cur.executemany(f"UPDATE {table} SET {assignments} WHERE id = %s", params)


def _any_firing(services: set[str]) -> bool:
    marks = ",".join(["%s"] * len(services))
    with connection.cursor() as cur:
        # Served by the partial unique index alert_one_firing_per_series_kind.
        cur.execute(
            f"SELECT 1 FROM metrics_alert WHERE state = %s AND kind = %s AND service IN ({marks}) LIMIT 1",
            [Alert.FIRING, Alert.THRESHOLD, *sorted(services)],
        )
        return cur.fetchone() is not None


def _apply_series(
    alert: Alert | None,
    key: tuple[str, str],
    threshold: Threshold,
    graded: list[tuple[Row, str | None]],
    resolve_points: int,
    resolve_after: timedelta,
) -> tuple[Alert | None, list[Alert], list[Alert]]:
    """Walk one series' points through its alert: (breached, changed, to_save).

    An alert opened or resolved here is written here; to_save holds the one
    still firing at the end if the batch changed it, for the caller's single
    _save_alerts.
    """
    service, metric_type = key
    changed: list[Alert] = []
    to_save: list[Alert] = []
    breached: Alert | None = None
    dirty = False
    for row, severity in graded:
        if severity is not None:
            if alert is None:
                alert = _open(service, metric_type, severity, row, threshold)
                changed.append(alert)
                dirty = False
            else:
                alert.breach_count += 1
                # A late breach (older than the last one) neither is the latest
                # value nor undoes the healthy points counted since that last one.
                if row.timestamp > alert.last_breach_at:
                    alert.latest_value = row.value
                    alert.healthy_count = 0
                    alert.last_breach_at = row.timestamp
                if severity == Alert.CRITICAL and alert.severity == Alert.WARNING:
                    alert.severity = Alert.CRITICAL
                    alert.threshold = threshold.limit(Alert.CRITICAL)
                    alert.message = format_message(service, metric_type, Alert.CRITICAL, row.value, threshold)
                    if alert not in changed:
                        changed.append(alert)
                dirty = True
            breached = alert
        elif alert is not None:
            if row.timestamp <= alert.last_breach_at:
                # Hysteresis runs on point time: a late healthy point from
                # before the last breach says nothing about recovery since.
                continue
            alert.latest_value = row.value
            alert.healthy_count += 1
            dirty = True
            if alert.healthy_count >= resolve_points and row.timestamp - alert.last_breach_at >= resolve_after:
                alert.state = Alert.RESOLVED
                alert.resolved_at = row.timestamp
                # Now, not with the batch: a breach later in this batch opens a
                # new alert, which the one-firing-per-series index allows only
                # once this one is stored as resolved.
                _save_alerts([alert])
                if alert not in changed:
                    changed.append(alert)
                if breached is alert:
                    breached = None
                alert = None
                dirty = False
    if alert is not None and dirty:
        to_save.append(alert)
    return breached, changed, to_save


def _open(service: str, metric_type: str, severity: str, row: Row, threshold: Threshold) -> Alert:
    fields = {
        "severity": severity,
        "value": row.value,
        "latest_value": row.value,
        "threshold": threshold.limit(severity),
        "direction": threshold.direction,
        "message": format_message(service, metric_type, severity, row.value, threshold),
        "started_at": row.timestamp,
        "last_breach_at": row.timestamp,
    }
    try:
        with transaction.atomic():
            return Alert.objects.create(service=service, metric_type=metric_type, **fields)
    except IntegrityError:
        # Another instance opened it between our read and our insert: join it.
        alert = (
            Alert.objects.firing()
            .select_for_update()
            .get(kind=Alert.THRESHOLD, service=service, metric_type=metric_type)
        )
        alert.latest_value = row.value
        alert.breach_count += 1
        alert.healthy_count = 0
        alert.last_breach_at = max(alert.last_breach_at, row.timestamp)
        if severity == Alert.CRITICAL and alert.severity == Alert.WARNING:
            alert.severity = Alert.CRITICAL
            alert.threshold = threshold.limit(Alert.CRITICAL)
            alert.message = format_message(service, metric_type, Alert.CRITICAL, row.value, threshold)
        alert.save()
        return alert


def series_status(service: str, metric_type: str, value: float | None, firing: str | None = None) -> str:
    """healthy / warning / critical / stale for one series' current value.

    `firing` is the severity of the series' firing alert, if any: it wins, since
    an alert holds through hysteresis while the value may already look healthy.
    """
    if value is None:
        return "stale"
    if firing:
        return firing
    threshold = rules.get(service, metric_type)
    return "healthy" if _disabled(threshold) else threshold.status(value)
