"""Silences: creating them, marking silenced alerts for the dashboard, pruning old ones.

Matching itself is Silence.matches over notify.labels(alert); the outbox
consults active silences when it queues (notify.enqueue) and again when it
freezes a message (outbox._freeze).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from . import notify
from .models import Notification, Silence

DASHBOARD_SILENCE = timedelta(hours=1)


def silence_alert(alert: Any, username: str, duration: timedelta = DASHBOARD_SILENCE, comment: str = "") -> Silence:
    """The dashboard's "silence 1 h": the alert's series, from now."""
    now = timezone.now()
    return Silence.objects.create(
        service=alert.service,
        metric_type=alert.metric_type,
        starts_at=now,
        ends_at=now + duration,
        comment=comment or f"Silenced from the dashboard alert panel ({alert.message})"[:500],
        created_by=username,
    )


def mark(alerts: list[Any], now: datetime | None = None) -> list[Any]:
    """Set `silenced_until` and `delivery` on each alert for the alert panel (two queries in all)."""
    silences = notify.active_silences(now or timezone.now())
    latest: dict[int, Notification] = {}
    rows = Notification.alerts.through.objects.filter(alert_id__in=[a.pk for a in alerts]).select_related(
        "notification"
    )
    for link in rows.order_by("notification__created_at", "notification_id"):
        latest[link.alert_id] = link.notification
    for alert in alerts:
        hit = notify.silenced_by(alert, silences)
        alert.silenced_until = hit.ends_at if hit else None
        alert.delivery = latest.get(alert.pk)
    return alerts


def prune(alerts_cutoff: datetime) -> int:
    """Retention: silences that ended and notifications created before the alert cutoff.

    Runs before retention deletes resolved alerts, and also unlinks notifications
    from those alerts: the alert delete is plain SQL, which does not cascade.
    """
    deleted = 0
    with transaction.atomic():
        links = Notification.alerts.through.objects
        links.filter(alert__state="resolved", alert__resolved_at__lt=alerts_cutoff).delete()
        deleted += Silence.objects.filter(ends_at__lt=alerts_cutoff, end_handled=True).delete()[0]
        old = Notification.objects.filter(created_at__lt=alerts_cutoff).exclude(state=Notification.PENDING)
        deleted += old.delete()[0]
    return deleted
