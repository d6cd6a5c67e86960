"""Contact points, the notification outbox and silences.

Foreign keys name "metrics.Alert" as a string so this module never imports
metrics.models (which imports this one at its end for Django to see it).
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

SEVERITY_RANK = {"warning": 1, "critical": 2}
ALERTMANAGER_SCHEMES = ("alertmanager+http", "alertmanager+https")


def split_csv(text: str) -> set[str]:
    return {part.strip() for part in text.split(",") if part.strip()}


def validate_destination(url: str) -> None:
    scheme = urlsplit(url).scheme.lower()
    if not scheme or "://" not in url:
        raise ValidationError("A destination is a URL such as alertmanager+https://host/hook or mailto://user@host")


class ContactPoint(models.Model):
    """Where notifications go: an Apprise URL, or our Alertmanager-compatible webhook."""

    name = models.CharField(max_length=100, unique=True)
    destination = models.CharField(
        max_length=1000,
        validators=[validate_destination],
        help_text="alertmanager+https://host/path for the Alertmanager webhook (signed), "
        "or any Apprise URL: mailto://, json://, slack://, ntfy://, tgram:// …",
    )
    services = models.CharField(
        max_length=1000, blank=True, default="", help_text="Comma-separated services; empty = every service."
    )
    metric_types = models.CharField(
        max_length=200, blank=True, default="", help_text="Comma-separated metric types; empty = every type."
    )
    min_severity = models.CharField(
        max_length=8, choices=[("warning", "warning"), ("critical", "critical")], default="warning"
    )
    secret = models.CharField(
        max_length=200, blank=True, default="", help_text="HMAC-SHA256 key for the Alertmanager webhook signature."
    )
    enabled = models.BooleanField(default=True)
    from_environment = models.BooleanField(default=False, editable=False, help_text="Managed by NOTIFY_URLS.")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_alertmanager(self) -> bool:
        return urlsplit(self.destination).scheme.lower() in ALERTMANAGER_SCHEMES

    def accepts(self, service: str, metric_type: str, severity: str) -> bool:
        services, types = split_csv(self.services), split_csv(self.metric_types)
        if services and service not in services:
            return False
        if types and metric_type not in types:
            return False
        return SEVERITY_RANK.get(severity, 0) >= SEVERITY_RANK.get(self.min_severity, 0)


class NotificationQuerySet(models.QuerySet["Notification"]):
    def due(self, now: datetime) -> NotificationQuerySet:
        """Pending rows whose time has come and that no live runner holds."""
        return self.filter(state=Notification.PENDING, next_attempt_at__lte=now).filter(
            Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
        )

    def open_group(self, contact_point_id: int, group_key: str, now: datetime) -> NotificationQuerySet:
        """Pending rows of one group nobody has started sending: changes may still join them."""
        return self.filter(
            contact_point_id=contact_point_id,
            group_key=group_key,
            state=Notification.PENDING,
            attempts=0,
            claimed_until__isnull=True,
        )


class Notification(models.Model):
    """The outbox: one message to one contact point, written with the alert change it reports."""

    OPEN, ESCALATE, RESOLVE = "open", "escalate", "resolve"
    STATUS_CHOICES = [(OPEN, OPEN), (ESCALATE, ESCALATE), (RESOLVE, RESOLVE)]
    PENDING, SENT, FAILED, MUTED = "pending", "sent", "failed", "muted"
    STATE_CHOICES = [(PENDING, PENDING), (SENT, SENT), (FAILED, FAILED), (MUTED, MUTED)]

    contact_point = models.ForeignKey(ContactPoint, on_delete=models.CASCADE, related_name="notifications")
    alerts = models.ManyToManyField("metrics.Alert", related_name="notifications", blank=True)
    group_key = models.CharField(max_length=200, help_text="Alerts of one group go out as one message.")
    status = models.CharField(max_length=8, choices=STATUS_CHOICES)
    payload = models.JSONField(default=dict, blank=True, help_text="Frozen at the first attempt; retries resend it.")
    state = models.CharField(max_length=8, choices=STATE_CHOICES, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()
    next_attempt_at = models.DateTimeField()
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    sent_at = models.DateTimeField(null=True, blank=True)

    objects = NotificationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # Serves the runner's due query: pending rows by due time (partial: sent rows are most rows).
            models.Index(fields=["next_attempt_at"], condition=Q(state="pending"), name="notification_due_idx"),
            # Serves grouping at enqueue (the open row of a contact point's group) and the repeat interval.
            models.Index(fields=["contact_point", "group_key", "created_at"], name="notification_group_idx"),
            # Serves the retention delete.
            models.Index(fields=["created_at"], name="notification_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.status} {self.group_key} -> {self.contact_point_id} ({self.state})"


class SilenceQuerySet(models.QuerySet["Silence"]):
    def active(self, now: datetime) -> SilenceQuerySet:
        return self.filter(starts_at__lte=now, ends_at__gt=now)


class Silence(models.Model):
    """Mutes notifications (never the alert) of matching alerts between starts_at and ends_at."""

    service = models.CharField(max_length=64, blank=True, default="", help_text="Empty: any service.")
    metric_type = models.CharField(max_length=16, blank=True, default="", help_text="Empty: any metric type.")
    matchers = models.JSONField(
        default=dict, blank=True, help_text='Label/tag matchers, e.g. {"severity": "warning", "region": "eu"}.'
    )
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    comment = models.CharField(max_length=500, blank=True, default="")
    created_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    end_handled = models.BooleanField(
        default=False, editable=False, help_text="Alerts still firing at the end were notified."
    )

    objects = SilenceQuerySet.as_manager()

    class Meta:
        ordering = ["-starts_at", "-id"]
        indexes = [
            # Serves "active now" at enqueue and the end-of-silence sweep.
            models.Index(fields=["ends_at", "starts_at"], name="silence_window_idx"),
        ]

    def __str__(self) -> str:
        scope = "/".join(part or "*" for part in (self.service, self.metric_type))
        return f"silence {scope} until {self.ends_at:%Y-%m-%d %H:%M}"

    def clean(self) -> None:
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValidationError({"ends_at": "A silence must end after it starts."})
        if not isinstance(self.matchers, dict) or not all(isinstance(v, str) for v in (self.matchers or {}).values()):
            raise ValidationError({"matchers": "Matchers are a JSON object of label -> string value."})

    def matches(self, labels: dict[str, str]) -> bool:
        if self.service and labels.get("service") != self.service:
            return False
        if self.metric_type and labels.get("metric_type") != self.metric_type:
            return False
        return all(labels.get(key) == value for key, value in (self.matchers or {}).items())
