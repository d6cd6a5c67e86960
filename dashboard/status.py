"""What the server-rendered fragments show: stat cards, the health matrix, the alert panel.

Everything here is a few indexed, aggregated queries (rollups before the
rolled-up boundary, raw points after it), so the pages stay fast whatever
the range; the heavy per-bucket work is left to the chart data endpoints.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, Sum

from metrics.alerts.rules import series_status
from metrics.kinds import KINDS, METRIC_TYPES
from metrics.models import Alert, CoarseRollup, Point, Rollup, Service
from metrics.series import rollups

from .selection import Selection

SeriesKey = tuple[str, str]
HOUR = 3600  # the rollup tier the stat cards' totals read for whole hours
STATUS_RANK = {"stale": 0, "healthy": 1, "warning": 2, "critical": 3}


def window_totals(start: datetime, end: datetime, services: list[str] | None) -> dict[SeriesKey, tuple[float, int]]:
    """(sum, count) per series over [start, end): rollups (hour windows for whole hours), then raw points after the boundary."""
    boundary = rollups.boundary_within(start, end)
    totals: dict[SeriesKey, tuple[float, int]] = {}

    def add(rows: Any) -> None:
        for row in rows:
            key = (row["service"], row["metric_type"])
            total, count = totals.get(key, (0.0, 0))
            totals[key] = (total + (row["s"] or 0.0), count + int(row["c"] or 0))

    def add_summaries(qs: Any) -> None:
        if services:
            qs = qs.filter(service__in=services)
        add(qs.values("service", "metric_type").annotate(s=Sum("sum"), c=Sum("count")).order_by())

    if start < boundary:
        lo = rollups.floor_minute(start)
        hours = rollups.tier_span(HOUR, lo, boundary)
        if hours is None:
            add_summaries(Rollup.objects.window(lo, boundary))
        else:
            # A 7-day card sums 4,200 hour windows of 25 series instead of 252,000 minutes.
            if lo < hours[0]:
                add_summaries(Rollup.objects.window(lo, hours[0]))
            add_summaries(CoarseRollup.objects.filter(width=HOUR).window(*hours))
            if hours[1] < boundary:
                add_summaries(Rollup.objects.window(hours[1], boundary))
    if boundary < end:
        points = Point.objects.series(services, None).window(boundary, end)
        add(points.values("service", "metric_type").annotate(s=Sum("value"), c=Count("id")).order_by())
    return totals


def latest_values(now: datetime, services: list[str] | None) -> dict[SeriesKey, float]:
    """The newest value of each series seen in the recent window (SERVICE_WINDOW_SECONDS).

    One index seek per (service, metric_type) on point_series_ts_idx, so the
    cost follows the number of series, not the ingest rate.
    """
    start = now - timedelta(seconds=settings.TELEMETRY["SERVICE_WINDOW_SECONDS"])
    types = " UNION ALL ".join("SELECT %s AS mt" for _ in METRIC_TYPES)
    where = ""
    params: list[Any] = [rollups.db_ts(start), rollups.db_ts(now + timedelta(seconds=1)), *METRIC_TYPES]
    if services:
        where = f"WHERE s.name IN ({', '.join(['%s'] * len(services))})"
        params.extend(services)
    sql = (
        "SELECT s.name, m.mt, (SELECT p.value FROM metrics_point p WHERE p.service = s.name AND p.metric_type = m.mt"
        " AND p.timestamp >= %s AND p.timestamp < %s ORDER BY p.timestamp DESC LIMIT 1)"
        f" FROM metrics_service s CROSS JOIN ({types}) m {where}"
    )
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return {(service, metric_type): value for service, metric_type, value in cur.fetchall() if value is not None}


def firing_severity(services: list[str] | None) -> dict[SeriesKey, str]:
    qs = Alert.objects.firing()
    if services:
        qs = qs.filter(service__in=services)
    return {(s, m): sev for s, m, sev in qs.values_list("service", "metric_type", "severity")}


def service_names(selection: Selection) -> list[str]:
    known = list(Service.objects.order_by("name").values_list("name", flat=True))
    if selection.services:
        return [s for s in known if s in selection.services]
    return known


@dataclass
class Card:
    metric_type: str
    label: str
    current: float | None
    average: float | None
    previous: float | None
    status: str

    @property
    def change(self) -> float | None:
        if self.average is None or not self.previous:
            return None
        return (self.average - self.previous) / abs(self.previous) * 100

    @property
    def current_text(self) -> str:
        return KINDS[self.metric_type].format(self.current)

    @property
    def average_text(self) -> str:
        return KINDS[self.metric_type].format(self.average)

    @property
    def change_text(self) -> str:
        change = self.change
        return "–" if change is None else f"{change:+.1f}%"


def _combine(
    metric_type: str, per_service: dict[str, float], totals: dict[SeriesKey, tuple[float, int]]
) -> float | None:
    """Additive kinds (throughput) add up across services; the others are averaged over their points."""
    if KINDS[metric_type].additive:
        return sum(per_service.values()) if per_service else None
    total = sum(totals[(s, metric_type)][0] for s in per_service)
    count = sum(totals[(s, metric_type)][1] for s in per_service)
    return total / count if count else None


def _averages(totals: dict[SeriesKey, tuple[float, int]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for (service, metric_type), (total, count) in totals.items():
        if count:
            out[metric_type][service] = total / count
    return out


@dataclass
class Snapshot:
    """The latest value and firing severity of each series: shared by the cards and the matrix."""

    current: dict[SeriesKey, float]
    firing: dict[SeriesKey, str]

    @classmethod
    def take(cls, selection: Selection) -> Snapshot:
        services = selection.service_list
        return cls(latest_values(selection.now, services), firing_severity(services))


def cards(selection: Selection, snapshot: Snapshot | None = None) -> list[Card]:
    services = selection.service_list
    snapshot = snapshot or Snapshot.take(selection)
    current, firing = snapshot.current, snapshot.firing
    totals = window_totals(selection.start, selection.end, services)
    previous_totals = window_totals(selection.previous_start, selection.start, services)
    averages, previous_averages = _averages(totals), _averages(previous_totals)
    out = []
    for metric_type in METRIC_TYPES:
        now_values = {s: v for (s, m), v in current.items() if m == metric_type}
        if KINDS[metric_type].additive:
            current_value = sum(now_values.values()) if now_values else None
        else:
            current_value = sum(now_values.values()) / len(now_values) if now_values else None
        statuses = [series_status(s, metric_type, v, firing.get((s, metric_type))) for s, v in now_values.items()]
        status = max(statuses, key=STATUS_RANK.__getitem__) if statuses else "stale"
        out.append(
            Card(
                metric_type=metric_type,
                label=KINDS[metric_type].label,
                current=current_value,
                average=_combine(metric_type, averages.get(metric_type, {}), totals),
                previous=_combine(metric_type, previous_averages.get(metric_type, {}), previous_totals),
                status=status,
            )
        )
    return out


@dataclass
class Cell:
    service: str
    metric_type: str
    value: float | None
    status: str

    @property
    def value_text(self) -> str:
        return KINDS[self.metric_type].format(self.value)


@dataclass
class MatrixRow:
    service: str
    cells: list[Cell] = field(default_factory=list)


def matrix(selection: Selection, snapshot: Snapshot | None = None) -> list[MatrixRow]:
    snapshot = snapshot or Snapshot.take(selection)
    current, firing = snapshot.current, snapshot.firing
    rows = []
    for service in service_names(selection):
        row = MatrixRow(service)
        for metric_type in METRIC_TYPES:
            value = current.get((service, metric_type))
            status = series_status(service, metric_type, value, firing.get((service, metric_type)))
            row.cells.append(Cell(service, metric_type, value, status))
        rows.append(row)
    return rows


SEVERITY_ORDER = {Alert.CRITICAL: 0, Alert.WARNING: 1}


@dataclass
class AlertPanel:
    firing: list[Alert]
    resolved: list[Alert]


def alert_panel(services: list[str] | None, resolved_limit: int = 10, firing_limit: int = 50) -> AlertPanel:
    """Firing alerts, critical first and newest first within a severity; then recently resolved ones."""
    qs = Alert.objects.all()
    if services:
        qs = qs.filter(service__in=services)
    firing = list(qs.filter(state=Alert.FIRING).order_by("-started_at", "-id")[:firing_limit])
    firing.sort(key=lambda a: SEVERITY_ORDER.get(a.severity, 9))
    resolved = list(qs.filter(state=Alert.RESOLVED).order_by("-resolved_at", "-id")[:resolved_limit])
    return AlertPanel(firing, resolved)


def service_tags(service: str, sample: int = 500) -> dict[str, list[str]]:
    """Tag keys and their values seen on the service's most recent points."""
    tags: dict[str, set[str]] = defaultdict(set)
    recent = Point.objects.filter(service=service).order_by("-timestamp").values_list("tags", flat=True)[:sample]
    for point_tags in recent:
        for key, value in (point_tags or {}).items():
            if len(tags[key]) < 20:
                tags[key].add(str(value))
    return {key: sorted(values) for key, values in sorted(tags.items())}
