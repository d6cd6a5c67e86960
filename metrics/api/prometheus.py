"""Prometheus exposition: a custom collector that reads the database at scrape time.

Nothing here is a global mutable gauge: each scrape reads the per-minute
rollups, the latest point of each series and the firing alerts, and renders
them with prometheus-client, followed by this process's own counters and
request latencies (metrics.stats.REGISTRY).

Cost: a scrape must not re-read every raw point of the window (0.3-0.45 s at
111k points). The `telemetry_window` summary therefore covers the last
SERVICE_WINDOW_SECONDS of *complete* minutes, merged from their rollup
sketches (raw points only for complete minutes the scheduler has not rolled up
yet), and is kept for WINDOW_CACHE_SECONDS; `telemetry_value` is one index
seek per series.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from django.conf import settings
from django.db import connection
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from metrics import stats
from metrics.models import Alert
from metrics.series import query, rollups, sketch

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))

WINDOW_CACHE_SECONDS = 10.0


@dataclass(frozen=True)
class WindowFigures:
    count: float
    sum: float
    quantiles: tuple[float, ...]  # in QUANTILES order


@dataclass
class _Cached:
    key: tuple[datetime, datetime | None]
    computed_at: datetime
    figures: dict[tuple[str, str], WindowFigures]


_cache: _Cached | None = None
_cache_lock = threading.Lock()


def clear_cache() -> None:
    global _cache
    with _cache_lock:
        _cache = None


def window_bounds(now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the complete minutes the summary covers."""
    end = rollups.floor_minute(now)
    minutes = max(1, math.ceil(settings.TELEMETRY["SERVICE_WINDOW_SECONDS"] / 60))
    return end - timedelta(minutes=minutes), end


def _compute_window(start: datetime, end: datetime) -> dict[tuple[str, str], WindowFigures]:
    spec = query.QuerySpec(start, end, None, None, "1m", 1, False)
    summaries = query.minute_summaries(spec, start, end)
    if not len(summaries):
        return {}
    ids: dict[tuple[str, str], int] = {}
    group = np.fromiter(
        (ids.setdefault(pair, len(ids)) for pair in zip(summaries.service, summaries.metric_type, strict=True)),
        dtype=np.int64,
        count=len(summaries),
    )
    n = len(ids)
    counts = np.bincount(group, weights=summaries.count, minlength=n)
    sums = np.bincount(group, weights=summaries.sum, minlength=n)
    mins = np.full(n, np.inf)
    np.minimum.at(mins, group, summaries.min)
    maxs = np.full(n, -np.inf)
    np.maximum.at(maxs, group, summaries.max)
    levels = [float(q) for q, _ in QUANTILES]
    pct = sketch.grouped_quantiles(summaries.sketches, group, n, levels, mins, maxs)
    return {
        pair: WindowFigures(float(counts[g]), float(sums[g]), tuple(float(v) for v in pct[g]))
        for pair, g in ids.items()
    }


def window_figures(now: datetime) -> dict[tuple[str, str], WindowFigures]:
    """Per-series summary of the window, from the cache while it is fresh and the window has not moved."""
    global _cache
    start, end = window_bounds(now)
    key = (end, rollups.rolled_through())
    with _cache_lock:
        cached = _cache
        if (
            cached is not None
            and cached.key == key
            and cached.computed_at <= now < cached.computed_at + timedelta(seconds=WINDOW_CACHE_SECONDS)
        ):
            return cached.figures
    figures = _compute_window(start, end)
    with _cache_lock:
        _cache = _Cached(key, now, figures)
    return figures


def latest_values(now: datetime, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], float]:
    """The newest value of each series seen within SERVICE_WINDOW_SECONDS: one index seek per series."""
    start = now - timedelta(seconds=settings.TELEMETRY["SERVICE_WINDOW_SECONDS"])
    params = [rollups.db_ts(start), rollups.db_ts(now + timedelta(seconds=1))]
    # Series rows name every series ingested; the window's own pairs cover any that came another way.
    extra = " UNION ".join(["SELECT %s, %s"] * len(pairs))
    sources = "SELECT DISTINCT service, metric_type FROM metrics_series" + (f" UNION {extra}" if extra else "")
    # point_series_ts_idx (service, metric_type, timestamp) answers each subquery with one seek.
    sql = (
        "SELECT s.service, s.metric_type, (SELECT p.value FROM metrics_point p"
        " WHERE p.service = s.service AND p.metric_type = s.metric_type AND p.timestamp >= %s AND p.timestamp < %s"
        f" ORDER BY p.timestamp DESC, p.id DESC LIMIT 1) FROM ({sources}) s"
    )
    with connection.cursor() as cur:
        cur.execute(sql, [*params, *(x for pair in sorted(pairs) for x in pair)])
        return {(svc, mt): float(value) for svc, mt, value in cur.fetchall() if value is not None}


class TelemetryCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from self.series()
        yield self.alerts()

    def series(self) -> Iterator[Metric]:
        now = datetime.now(UTC)
        window = window_figures(now)
        latest = latest_values(now, set(window))
        current = GaugeMetricFamily(
            "telemetry_value",
            "Latest value of each series within the service window (units: see metric_type).",
            labels=["service", "metric_type"],
        )
        for (service, metric_type), value in sorted(latest.items()):
            current.add_metric([service, metric_type], value)
        summary = Metric(
            "telemetry_window", "Distribution of each series over the last complete minutes of the window.", "summary"
        )
        for (service, metric_type), figures in sorted(window.items()):
            labels = {"service": service, "metric_type": metric_type}
            for (quantile, _), value in zip(QUANTILES, figures.quantiles, strict=True):
                summary.add_sample("telemetry_window", {**labels, "quantile": quantile}, value)
            summary.add_sample("telemetry_window_count", labels, figures.count)
            summary.add_sample("telemetry_window_sum", labels, figures.sum)
        yield current
        yield summary

    def alerts(self) -> Metric:
        firing = GaugeMetricFamily("telemetry_alerts_firing", "Alerts currently firing.", labels=["severity"])
        counts = dict.fromkeys((Alert.WARNING, Alert.CRITICAL), 0)
        for severity in Alert.objects.firing().values_list("severity", flat=True):
            counts[severity] = counts.get(severity, 0) + 1
        for severity, count in counts.items():
            firing.add_metric([severity], count)
        return firing


registry = CollectorRegistry(auto_describe=False)
registry.register(TelemetryCollector())


def exposition() -> bytes:
    """What the database says (read now), then this process's own counters and latencies (metrics.stats)."""
    return generate_latest(registry) + generate_latest(stats.REGISTRY)
