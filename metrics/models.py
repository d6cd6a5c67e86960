from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TypedDict

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from metrics.errors import ApiError
from metrics.kinds import ABOVE, BELOW, METRIC_TYPE_CHOICES
from metrics.points import PointDict, iso


class PointQuerySet(models.QuerySet["Point"]):
    def window(self, start: datetime, end: datetime) -> PointQuerySet:
        return self.filter(timestamp__gte=start, timestamp__lt=end)

    def series(self, services: list[str] | None, metric_types: list[str] | None) -> PointQuerySet:
        qs = self
        if services:
            qs = qs.filter(service__in=services)
        if metric_types:
            qs = qs.filter(metric_type__in=metric_types)
        return qs


class Point(models.Model):
    """One raw measurement. Written in bulk by metrics.ingest.store, never one by one."""

    timestamp = models.DateTimeField()
    service = models.CharField(max_length=64)
    metric_type = models.CharField(max_length=16, choices=METRIC_TYPE_CHOICES)
    value = models.FloatField()
    tags = models.JSONField(default=dict, blank=True)

    objects = PointQuerySet.as_manager()

    class Meta:
        indexes = [
            # Serves every range read of one series: /metrics/query, charts,
            # rollup of one minute, per-service status.
            models.Index(fields=["service", "metric_type", "timestamp"], name="point_series_ts_idx"),
            # Serves the retention delete and the "latest N points" snapshot.
            models.Index(fields=["timestamp"], name="point_ts_idx"),
            # Serves the admin's point list filtered by service, newest first:
            # WHERE service = %s [AND timestamp range] ORDER BY timestamp DESC, id DESC
            # LIMIT 100 (point_series_ts_idx needs metric_type too, else a sort of every row).
            models.Index(fields=["service", "timestamp"], name="point_service_ts_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.service}/{self.metric_type}={self.value}@{iso(self.timestamp)}"

    def to_dict(self) -> PointDict:
        return {
            "timestamp": iso(self.timestamp) or "",
            "service": self.service,
            "metric_type": self.metric_type,
            "value": self.value,
            "tags": self.tags or {},
        }


class Service(models.Model):
    name = models.CharField(max_length=64, unique=True)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    series_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Series(models.Model):
    """A distinct (service, metric_type, tag set): what the cardinality guard counts.

    Retention deletes a series once its data is gone, which frees room under
    MAX_SERIES_PER_SERVICE; staff can delete one in the admin sooner.
    """

    service = models.CharField(max_length=64)
    metric_type = models.CharField(max_length=16)
    tags_hash = models.CharField(max_length=40)
    # The tag set itself, for people reading the admin; null for series first
    # seen before it was stored, until their next point.
    tags = models.JSONField(null=True, blank=True)
    first_seen = models.DateTimeField()
    # Timestamp of its newest point, give or take a minute: ingest moves it
    # forward at most once a minute per series (no write per point).
    last_seen = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["service", "metric_type", "tags_hash"], name="series_identity_uniq"),
        ]
        verbose_name_plural = "series"

    def __str__(self) -> str:
        return f"{self.service}/{self.metric_type} {self.tags_hash[:8] or '(no tags)'}"


class RollupQuerySet(models.QuerySet["Rollup"]):
    def window(self, start: datetime, end: datetime) -> RollupQuerySet:
        return self.filter(minute__gte=start, minute__lt=end)


class MinuteSummary(models.Model):
    """Count, sum, min, max and a mergeable percentile sketch of one series' minute."""

    service = models.CharField(max_length=64)
    metric_type = models.CharField(max_length=16, choices=METRIC_TYPE_CHOICES)
    minute = models.DateTimeField()
    count = models.PositiveIntegerField()
    sum = models.FloatField()
    min = models.FloatField()
    max = models.FloatField()
    sketch = models.BinaryField()

    class Meta:
        abstract = True


class Rollup(MinuteSummary):
    """Per (service, metric_type, minute) summary with a mergeable percentile sketch."""

    objects = RollupQuerySet.as_manager()

    class Meta:
        constraints = [
            # One row per series minute; also the index that serves rollup range reads.
            models.UniqueConstraint(fields=["service", "metric_type", "minute"], name="rollup_series_minute_uniq"),
        ]
        indexes = [
            # Serves the retention delete of old rollups.
            models.Index(fields=["minute"], name="rollup_minute_idx"),
            # Serves the admin's rollup list filtered by service, newest first:
            # WHERE service = %s ORDER BY minute DESC, id DESC LIMIT 100 OFFSET n.
            models.Index(fields=["service", "minute"], name="rollup_service_minute_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.service}/{self.metric_type}@{iso(self.minute)}"


class SketchContribution(MinuteSummary):
    """Observations that arrive already bucketed (OTLP histograms), merged into their minute's rollup.

    The raw Point of a histogram holds its mean; the bucket counts live here, one
    row per ingested histogram data point, and rollups.summarise_window adds
    them to the summary of the same (service, metric_type, minute), so the
    percentiles reflect the whole distribution and count/sum stay exact.
    """

    class Meta:
        indexes = [
            # Serves the merge into rollups: one series' minutes in a range, and the retention delete.
            models.Index(fields=["service", "metric_type", "minute"], name="sketchcontrib_series_idx"),
            models.Index(fields=["minute"], name="sketchcontrib_minute_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.service}/{self.metric_type}@{iso(self.minute)} +{self.count}"


class CoarseRollupQuerySet(models.QuerySet["CoarseRollup"]):
    def window(self, start: datetime, end: datetime) -> CoarseRollupQuerySet:
        return self.filter(start__gte=start, start__lt=end)


class CoarseRollup(models.Model):
    """The merge of one series' minute rollups over a whole window of `width` seconds (5 min, 30 min, 1 h).

    Derived data, kept by metrics.series.rollups: written when the window's
    last minute is rolled up, rewritten when a late point recomputes one of its
    minutes. Long ranges read these instead of every minute.
    """

    service = models.CharField(max_length=64)
    metric_type = models.CharField(max_length=16, choices=METRIC_TYPE_CHOICES)
    width = models.PositiveIntegerField(help_text="Seconds: one of rollups.TIERS.")
    start = models.DateTimeField()
    count = models.PositiveIntegerField()
    sum = models.FloatField()
    min = models.FloatField()
    max = models.FloatField()
    sketch = models.BinaryField()
    # The window's own P50/P95/P99 (its sketch, clamped to min and max), so a
    # bucket that is exactly this window is answered without a sketch merge.
    # NULL on windows written before they existed: those are merged as before.
    p50 = models.FloatField(null=True, blank=True)
    p95 = models.FloatField(null=True, blank=True)
    p99 = models.FloatField(null=True, blank=True)

    objects = CoarseRollupQuerySet.as_manager()

    class Meta:
        constraints = [
            # One row per series window; also the index that serves tier range reads:
            # WHERE service IN (...) AND metric_type IN (...) AND width = %s AND start >= %s AND start < %s.
            models.UniqueConstraint(
                fields=["service", "metric_type", "width", "start"], name="coarserollup_series_width_start_uniq"
            ),
        ]
        indexes = [
            # Serves every series of one tier in a range (the dashboard's totals,
            # WHERE width = %s AND start >= %s AND start < %s) and the retention
            # delete, tier by tier.
            models.Index(fields=["width", "start"], name="coarserollup_width_start_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.service}/{self.metric_type}@{iso(self.start)}+{self.width}s"


class RollupState(models.Model):
    """Singleton: every minute before `rolled_through` has its rollups.

    Every whole window of a tier (CoarseRollup) that ends by `rolled_through`
    and starts at or after `tiered_from` has its CoarseRollup row; older
    windows (all of them while it is null) are read from the minutes.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    rolled_through = models.DateTimeField(null=True, blank=True)
    tiered_from = models.DateTimeField(null=True, blank=True)

    @classmethod
    def get(cls) -> RollupState:
        obj, _ = cls.objects.get_or_create(id=1)
        return obj


class AlertRule(models.Model):
    ABOVE = ABOVE
    BELOW = BELOW
    DIRECTION_CHOICES = [(ABOVE, "above"), (BELOW, "below")]

    metric_type = models.CharField(max_length=16, choices=METRIC_TYPE_CHOICES)
    service = models.CharField(
        max_length=64, blank=True, default="", help_text="Empty: default for every service without its own rule."
    )
    warning = models.FloatField()
    critical = models.FloatField()
    direction = models.CharField(max_length=5, choices=DIRECTION_CHOICES, default=ABOVE)
    enabled = models.BooleanField(default=True, help_text="Threshold alerts for this scope.")
    # Anomaly detection (metrics/alerts/anomaly.py), independent of `enabled`.
    anomaly = models.BooleanField(default=False, help_text="Also alert when a value is unusual for its series.")
    anomaly_k = models.FloatField(default=5.0, help_text="Robust z-score beyond which a minute is anomalous.")
    anomaly_minutes = models.PositiveSmallIntegerField(
        default=3, help_text="Consecutive anomalous minutes before an anomaly alert opens."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["metric_type", "service"], name="alertrule_scope_uniq"),
        ]
        ordering = ["metric_type", "service"]

    def __str__(self) -> str:
        scope = self.service or "*"
        return f"{self.metric_type}[{scope}] {self.direction} {self.warning}/{self.critical}"


class AlertDict(TypedDict):
    id: int
    kind: str
    timestamp: str | None
    service: str
    metric_type: str
    severity: str
    state: str
    message: str
    value: float
    latest_value: float
    threshold: float
    started_at: str | None
    last_breach_at: str | None
    resolved_at: str | None
    breach_count: int
    acknowledged: bool
    acknowledged_by: str | None
    acknowledged_at: str | None


class AlertQuerySet(models.QuerySet["Alert"]):
    def firing(self) -> AlertQuerySet:
        return self.filter(state=Alert.FIRING)


class Alert(models.Model):
    WARNING = "warning"
    CRITICAL = "critical"
    SEVERITY_CHOICES = [(WARNING, "warning"), (CRITICAL, "critical")]
    FIRING = "firing"
    RESOLVED = "resolved"
    STATE_CHOICES = [(FIRING, "firing"), (RESOLVED, "resolved")]
    THRESHOLD = "threshold"
    ANOMALY = "anomaly"
    KIND_CHOICES = [(THRESHOLD, "threshold"), (ANOMALY, "anomaly")]

    kind = models.CharField(max_length=9, choices=KIND_CHOICES, default=THRESHOLD)
    service = models.CharField(max_length=64)
    metric_type = models.CharField(max_length=16, choices=METRIC_TYPE_CHOICES)
    severity = models.CharField(max_length=8, choices=SEVERITY_CHOICES)
    state = models.CharField(max_length=8, choices=STATE_CHOICES, default=FIRING)
    value = models.FloatField(help_text="The value that opened the alert.")
    latest_value = models.FloatField()
    threshold = models.FloatField()
    direction = models.CharField(max_length=5, default=AlertRule.ABOVE)
    message = models.CharField(max_length=255)
    started_at = models.DateTimeField()
    last_breach_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    breach_count = models.PositiveIntegerField(default=1)
    healthy_count = models.PositiveIntegerField(default=0)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=150, blank=True, default="")

    objects = AlertQuerySet.as_manager()

    class Meta:
        constraints = [
            # At most one firing alert per series and kind, enforced by the database
            # so two server instances racing on the same breach cannot open
            # duplicates; a threshold and an anomaly alert may fire together.
            models.UniqueConstraint(
                fields=["service", "metric_type", "kind"],
                condition=Q(state="firing"),
                name="alert_one_firing_per_series_kind",
            ),
        ]
        indexes = [
            # Serves /metrics/alerts (newest first) and the alert panel.
            models.Index(fields=["-started_at"], name="alert_started_idx"),
            # Serves the retention delete of resolved alerts.
            models.Index(fields=["state", "resolved_at"], name="alert_state_resolved_idx"),
        ]
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.severity} {self.service}/{self.metric_type} ({self.state})"

    def to_dict(self) -> AlertDict:
        return {
            "id": self.pk,
            "kind": self.kind,
            "timestamp": iso(self.last_breach_at if self.state == self.FIRING else self.resolved_at),
            "service": self.service,
            "metric_type": self.metric_type,
            "severity": self.severity,
            "state": self.state,
            "message": self.message,
            "value": self.value,
            "latest_value": self.latest_value,
            "threshold": self.threshold,
            "started_at": iso(self.started_at),
            "last_breach_at": iso(self.last_breach_at),
            "resolved_at": iso(self.resolved_at),
            "breach_count": self.breach_count,
            "acknowledged": self.acknowledged_at is not None,
            "acknowledged_by": self.acknowledged_by or None,
            "acknowledged_at": iso(self.acknowledged_at),
        }

    def acknowledge(self, username: str) -> None:
        self.acknowledged_at = timezone.now()
        self.acknowledged_by = username
        self.save(update_fields=["acknowledged_at", "acknowledged_by"])

    def resolve(self, when: datetime | None = None) -> None:
        self.state = self.RESOLVED
        self.resolved_at = when or timezone.now()
        self.save(update_fields=["state", "resolved_at"])


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


# last_used_at is informational: write it at most once a minute per key, so a
# busy client does not add a write to every ingest request.
LAST_USED_GRANULARITY = timedelta(minutes=1)


def api_key_from(credentials: Mapping[str, str]) -> str | None:
    """The raw key of `Authorization: Bearer <key>` or `X-API-Key`, if any."""
    header = credentials.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return credentials.get("X-API-Key")


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, field="Authorization", headers={"WWW-Authenticate": 'Bearer realm="telemetry"'})


class ApiKey(models.Model):
    """API key. Only its SHA-256 is stored; the key itself is shown once in the admin.

    Scopes: `ingest` writes points (JSON and OTLP), `read` reads them (query API,
    /metrics/prometheus, /ws/metrics when login is required). A leaked ingest key
    on an agent host then cannot read every service's data.
    """

    READ = "read"
    INGEST = "ingest"
    SCOPE_CHOICES = [("ingest,read", "read and ingest"), ("ingest", "ingest only"), ("read", "read only")]

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    services = models.CharField(
        max_length=1000, blank=True, default="", help_text="Comma-separated services this key may write; empty = all."
    )
    scopes = models.CharField(
        max_length=32,
        choices=SCOPE_CHOICES,
        default="ingest,read",
        help_text="What the key may do: ingest points, read them, or both.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def generate(cls, name: str, services: str = "", scopes: str = "ingest,read") -> tuple[ApiKey, str]:
        raw = "tm_" + secrets.token_urlsafe(32)
        key = cls.objects.create(name=name, prefix=raw[:10], key_hash=hash_key(raw), services=services, scopes=scopes)
        return key, raw

    @classmethod
    def authenticate(cls, credentials: Mapping[str, str], scope: str) -> ApiKey | None:
        """The key the credentials carry, or None when they carry none and none is needed; else ApiError.

        Looked up on every request (by its SHA-256, a unique index), so revoking
        a key in the admin takes effect on the very next request. A key that is
        sent but unknown or revoked is refused even when keys are optional: a
        client with a wrong key should learn it rather than write anonymously.
        A missing key is refused only for ingest when REQUIRE_API_KEY is on;
        whether reading needs credentials at all is metrics/api/access.py's
        decision (DASHBOARD_REQUIRE_LOGIN). Without a key this needs no database.
        """
        raw = api_key_from(credentials)
        if not raw:
            if scope == cls.INGEST and settings.TELEMETRY["REQUIRE_API_KEY"]:
                raise _unauthorized("A valid API key is required (Authorization: Bearer <key> or X-API-Key)")
            return None
        key = cls.objects.filter(key_hash=hash_key(raw)).first()
        if key is None or not key.is_active:
            raise _unauthorized("Invalid or revoked API key")
        if not key.has_scope(scope):
            raise ApiError(403, f"This API key may not {scope}: its scopes are {key.scopes}", field="Authorization")
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_GRANULARITY:
            cls.objects.filter(pk=key.pk).update(last_used_at=now)
        return key

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes.split(",")

    @property
    def allowed_services(self) -> set[str]:
        return {s.strip() for s in self.services.split(",") if s.strip()}

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


from .alerts.models import ContactPoint, Notification, Silence  # noqa: E402,F401 - Django finds models here
