"""Notification policy: which contact points hear about an alert change, grouped how, and when.

`enqueue` runs inside the transaction that changed the alerts (the ingest
transaction), so an outbox row exists exactly when its alert change does.
It never sends: metrics.alerts.delivery does, from the maintenance runner.

Rules for one change of one alert, per contact point that accepts it:
1. a pending, untouched message of the same group (service) that already
   holds this series absorbs it (the message shows the latest state);
2. a re-open of a series that was announced to this contact point within
   NOTIFY_REPEAT_INTERVAL_SECONDS waits until that interval has passed
   (a flapping series sends at most one message per interval);
3. otherwise it joins the group's message still in its grouping window
   (NOTIFY_GROUP_WAIT_SECONDS), or starts one that waits for that window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .models import ContactPoint, Notification, Silence

# A message's status is the most telling event it carries.
_STATUS_RANK = {Notification.OPEN: 3, Notification.ESCALATE: 2, Notification.RESOLVE: 1}
_env_synced = False


def kind(alert: Any) -> str:
    return getattr(alert, "kind", "") or "threshold"


def labels(alert: Any) -> dict[str, str]:
    """Alertmanager-style labels: what silences and receivers match on."""
    out = {
        "alertname": f"{alert.metric_type}_{kind(alert)}",
        "service": alert.service,
        "metric_type": alert.metric_type,
        "severity": alert.severity,
        "kind": kind(alert),
    }
    for key, value in (getattr(alert, "tags", None) or {}).items():
        out.setdefault(str(key), str(value))
    return out


def fingerprint(alert: Any) -> str:
    """Stable per series and kind (not per severity), as receivers deduplicate on it."""
    raw = f"{alert.service}\0{alert.metric_type}\0{kind(alert)}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def sync_environment() -> None:
    """Mirror NOTIFY_URLS into ContactPoint rows (once per process), so the outbox can point at them."""
    global _env_synced
    if _env_synced:
        return
    conf = settings.TELEMETRY
    wanted = {f"env-{i + 1}": url for i, url in enumerate(conf["NOTIFY_URLS"])}
    with transaction.atomic():
        for name, url in wanted.items():
            ContactPoint.objects.update_or_create(
                name=name,
                defaults={"destination": url, "secret": conf["NOTIFY_SECRET"], "from_environment": True},
            )
        ContactPoint.objects.filter(from_environment=True).exclude(name__in=wanted).update(enabled=False)
    _env_synced = True


def reset_environment_sync() -> None:
    global _env_synced
    _env_synced = False


def active_silences(now: datetime) -> list[Silence]:
    return list(Silence.objects.active(now))


def silenced_by(alert: Any, silences: Iterable[Silence]) -> Silence | None:
    alert_labels = labels(alert)
    return next((s for s in silences if s.matches(alert_labels)), None)


def event_for(alert: Any, known_ids: Collection[int] | None) -> str:
    if alert.state == "resolved":
        return Notification.RESOLVE
    if known_ids is not None:
        return Notification.ESCALATE if alert.pk in known_ids else Notification.OPEN
    return Notification.ESCALATE if alert.notifications.exists() else Notification.OPEN


def enqueue(alerts: Iterable[Any], known_ids: Collection[int] | None = None, now: datetime | None = None) -> int:
    """Write outbox rows for changed alerts. Call inside the transaction that changed them.

    `known_ids`: ids of alerts that were already firing before this change
    (their change is an escalation); without it, an alert that was notified
    before counts as known.
    """
    alerts = list(alerts)
    if not alerts:
        return 0
    sync_environment()
    points = list(ContactPoint.objects.filter(enabled=True))
    if not points:
        return 0
    now = now or timezone.now()
    silences = active_silences(now)
    placed = 0
    for alert in alerts:
        if silenced_by(alert, silences) is not None:
            continue
        status = event_for(alert, known_ids)
        for point in points:
            if point.accepts(alert.service, alert.metric_type, alert.severity):
                _place(point, alert, status, now)
                placed += 1
    return placed


def _place(point: ContactPoint, alert: Any, status: str, now: datetime) -> Notification:
    conf = settings.TELEMETRY
    group = alert.service
    waiting = Notification.objects.open_group(point.pk, group, now)
    same_series = {"alerts__service": alert.service, "alerts__metric_type": alert.metric_type}
    row = waiting.filter(**same_series).order_by("next_attempt_at").first()
    if row is None:
        due = now + timedelta(seconds=conf["NOTIFY_GROUP_WAIT_SECONDS"])
        deferred = False
        if status == Notification.OPEN:
            repeat = timedelta(seconds=conf["NOTIFY_REPEAT_INTERVAL_SECONDS"])
            last = (
                Notification.objects.filter(contact_point=point, created_at__gt=now - repeat, **same_series)
                .exclude(state=Notification.MUTED)
                .exclude(alerts=alert)
                .order_by("-created_at")
                .values_list("created_at", flat=True)
                .first()
            )
            if last is not None and last + repeat > due:
                due, deferred = last + repeat, True
        if not deferred:
            row = waiting.filter(next_attempt_at__lte=due).order_by("next_attempt_at").first()
        if row is None:
            row = Notification.objects.create(
                contact_point=point, group_key=group, status=status, created_at=now, next_attempt_at=due
            )
    if _STATUS_RANK[status] > _STATUS_RANK[row.status]:
        row.status = status
        row.save(update_fields=["status"])
    row.alerts.add(alert)
    return row


def end_silences(now: datetime | None = None) -> int:
    """Silences that ended: one notification for each matching alert that still fires."""
    from metrics.models import Alert  # runtime import: metrics.models imports this package's models

    now = now or timezone.now()
    ended = Silence.objects.filter(ends_at__lte=now, end_handled=False).order_by("ends_at")
    count = 0
    for silence in ended:
        with transaction.atomic():
            # The conditional update is the claim: two runners never both handle one silence.
            if not Silence.objects.filter(pk=silence.pk, end_handled=False).update(end_handled=True):
                continue
            still = active_silences(now)
            firing = Alert.objects.filter(state="firing", started_at__lt=silence.ends_at)
            if silence.service:
                firing = firing.filter(service=silence.service)
            if silence.metric_type:
                firing = firing.filter(metric_type=silence.metric_type)
            due = [a for a in firing if silence.matches(labels(a)) and silenced_by(a, still) is None]
            count += enqueue(due, now=now)
    return count
