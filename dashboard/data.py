"""Chart data: one JSON endpoint per chart shape, built on metrics.series.query.

- percentiles: P50/P95/P99 per time bucket of one metric type, pooled over the
  selected services (the latency chart, every chart of a service page);
- by-service: the average per time bucket of each service (stacked throughput);
- compare: one average per service over the range (the error-rate bars).

Each answer carries the thresholds to draw and the alerts to mark. Bucket size
and source (raw points for short ranges, merged rollup sketches for long ones)
are chosen exactly as /metrics/query does for `aggregation=auto`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db.models import Q
from django.http import HttpRequest, HttpResponse

from metrics.alerts.anomaly import expected_band
from metrics.alerts.rules import rules
from metrics.api.access import dashboard_data_access
from metrics.api.errors import FastJsonResponse, api_view
from metrics.errors import ApiError
from metrics.kinds import METRIC_TYPES
from metrics.models import Alert
from metrics.series import query, rollups

from . import selection as sel
from .status import window_totals

MAX_ALERT_MARKS = 200
# Raw values of the current bucket sent with a percentile chart (sampled beyond this).
MAX_LIVE_VALUES = 5000


def epoch_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def thresholds(metric_type: str, service: str = "") -> dict[str, Any] | None:
    """The thresholds to draw: a service's own rule when one service is shown, else the default."""
    rule = rules.get(service, metric_type)
    if rule.direction == "off":
        return None
    return {"warning": rule.warning, "critical": rule.critical, "direction": rule.direction}


def alert_marks(metric_type: str, selection: sel.Selection) -> list[dict[str, Any]]:
    """Alerts of these series that were open at some point of the range: where to mark open and resolve."""
    qs = Alert.objects.filter(metric_type=metric_type, started_at__lt=selection.end).filter(
        Q(resolved_at__isnull=True) | Q(resolved_at__gte=selection.start)
    )
    if selection.services:
        qs = qs.filter(service__in=selection.services)
    return [
        {
            "id": a.pk,
            "service": a.service,
            "severity": a.severity,
            "state": a.state,
            "started": epoch_ms(a.started_at),
            "resolved": epoch_ms(a.resolved_at) if a.resolved_at else None,
        }
        for a in qs.order_by("-started_at")[:MAX_ALERT_MARKS]
    ]


def spec_for(selection: sel.Selection, metric_type: str) -> query.QuerySpec:
    return query.QuerySpec(
        start=selection.start,
        end=selection.end,
        services=selection.service_list,
        metric_types=[metric_type],
        aggregation="auto",
        limit=settings.TELEMETRY["QUERY_DEFAULT_LIMIT"],
        exact=False,
    )


def live_sample(values: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` of `values`, evenly spaced through their sorted order.

    The same values give the same sample whatever order the database returns
    them in, so a chart that redraws does not move; and the sample's
    percentiles (what the page computes from it) stay those of all the values.
    """
    if len(values) <= limit:
        return values
    return np.sort(values)[np.linspace(0, len(values) - 1, limit).astype(np.int64)]


def pooled_percentiles(spec: query.QuerySpec, now: datetime) -> dict[str, Any]:
    """Complete buckets from the query engine; the bucket in progress as raw values, so the page keeps it exact live."""
    pooled = query.pooled_percentiles(spec, now)
    xs = [int(s) * 1000 for s in pooled.starts.tolist()]
    datasets = []
    for qi, key in enumerate(("p50", "p95", "p99")):
        column = pooled.pct[:, qi].tolist()
        datasets.append(
            {
                "key": key,
                "label": key.upper(),
                "data": [{"x": x, "y": y} for x, y in zip(xs, column, strict=True) if y == y],
            }
        )
    _, _, _, tail = rollups.fetch_raw(pooled.current, spec.end + timedelta(seconds=1), spec.services, spec.metric_types)
    tail = live_sample(tail, MAX_LIVE_VALUES)
    return {
        "source": pooled.source,
        "bucket_seconds": pooled.bucket_seconds,
        "datasets": datasets,
        "live": {"x": epoch_ms(pooled.current), "values": tail.tolist()},
        "points": int(np.sum(pooled.counts)) + len(tail) if len(xs) or len(tail) else 0,
    }


def by_service(spec: query.QuerySpec, now: datetime) -> dict[str, Any]:
    answer: dict[str, Any] = query.run(spec, now=now)
    series: dict[str, list[dict[str, Any]]] = {}
    for row in answer["data"]:
        ts = datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00"))
        series.setdefault(row["service"], []).append({"x": epoch_ms(ts), "y": row["avg"], "c": row["count"]})
    datasets: list[dict[str, Any]] = []
    for service, points in sorted(series.items()):
        points.sort(key=lambda p: p["x"])
        datasets.append({"key": service, "label": service, "data": points})
    return {"source": answer["source"], "bucket_seconds": answer["bucket_seconds"], "datasets": datasets}


def compare(selection: sel.Selection, metric_type: str) -> dict[str, Any]:
    totals = window_totals(selection.start, selection.end, selection.service_list)
    bars = [
        {"service": service, "sum": total, "count": count, "avg": total / count}
        for (service, mt), (total, count) in sorted(totals.items())
        if mt == metric_type and count
    ]
    return {"bars": bars}


def _parse(request: HttpRequest) -> tuple[sel.Selection, str]:
    selection = sel.from_request(request, strict=True)
    metric_type = request.GET.get("metric_type") or "latency"
    if metric_type not in METRIC_TYPES:
        raise sel.BadSelection("metric_type", f"must be one of {', '.join(METRIC_TYPES)}")
    return selection, metric_type


def _answer(request: HttpRequest, build: Any) -> HttpResponse:
    try:
        selection, metric_type = _parse(request)
    except sel.BadSelection as exc:
        raise ApiError(400, f"Invalid {exc.field}", field=exc.field) from None
    body = build(selection, metric_type)
    single = selection.services[0] if len(selection.services) == 1 else ""
    body.update(
        {
            "metric_type": metric_type,
            "range": selection.range_key,
            "start": epoch_ms(selection.start),
            "end": epoch_ms(selection.end),
            "thresholds": thresholds(metric_type, single),
            "alerts": alert_marks(metric_type, selection),
        }
    )
    return FastJsonResponse(body)


@api_view("GET")
@dashboard_data_access
def percentiles_view(request: HttpRequest) -> HttpResponse:
    return _answer(request, lambda s, m: with_band(s, m, pooled_percentiles(spec_for(s, m), s.now)))


def with_band(selection: sel.Selection, metric_type: str, body: dict[str, Any]) -> dict[str, Any]:
    """One service's chart also gets the anomaly baseline's expected band (docs/alerts.md)."""
    if len(selection.services) == 1:
        body["expected"] = expected_band(
            selection.services[0], metric_type, selection.start, selection.end, body["bucket_seconds"]
        )
    return body


@api_view("GET")
@dashboard_data_access
def by_service_view(request: HttpRequest) -> HttpResponse:
    return _answer(request, lambda s, m: by_service(spec_for(s, m), s.now))


@api_view("GET")
@dashboard_data_access
def compare_view(request: HttpRequest) -> HttpResponse:
    return _answer(request, compare)
