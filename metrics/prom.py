"""Prometheus exposition: a custom collector that reads the database at scrape time.

Nothing here is a global mutable gauge: each scrape asks the same domain
functions the dashboard uses (query.services_overview, firing alerts) and this
process's counters (metrics.stats), and renders them with prometheus-client.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from . import query, stats
from .models import Alert

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))

# (metric name without _total, stats counter(s), help)
COUNTERS = (
    ("telemetry_points_ingested", ("points_ingested",), "Points stored by this process (all ingestion paths)."),
    ("telemetry_requests_rejected", ("requests_rejected",), "JSON ingest requests rejected with 4xx by this process."),
    ("telemetry_otlp_requests", ("otlp_requests",), "OTLP export requests received by this process."),
    ("telemetry_otlp_requests_rejected", ("otlp_requests_rejected",), "OTLP export requests answered 4xx/5xx."),
    ("telemetry_otlp_points_rejected", ("otlp_points_rejected",), "OTLP data points rejected (partial success)."),
    ("telemetry_otlp_unknown_metrics", ("otlp_unknown_metrics",), "OTLP metrics ignored: name or unit not mapped."),
    ("telemetry_rejected_cardinality", ("rejected_cardinality",), "Requests refused by the series/service caps."),
    ("telemetry_broadcasts", ("broadcasts",), "Batches published to WebSocket clients."),
    ("telemetry_broadcast_failures", ("broadcast_failures",), "Broadcasts the channel layer failed to take."),
    ("telemetry_broadcast_dropped", ("broadcast_dropped",), "Broadcast messages dropped under backpressure."),
    ("telemetry_websocket_closed_slow", ("ws_closed_slow",), "WebSocket clients closed for not keeping up."),
    ("telemetry_db_unavailable", ("db_unavailable",), "Requests answered 503 because the database was unreachable."),
)


class TelemetryCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from self.series()
        yield self.alerts()
        yield from self.server()

    def series(self) -> Iterator[Metric]:
        latest = GaugeMetricFamily(
            "telemetry_value",
            "Latest value of each series (units: see metric_type).",
            labels=["service", "metric_type"],
        )
        window = Metric("telemetry_window", "Distribution of each series over the recent window.", "summary")
        for service in query.services_overview():
            for metric_type, figures in sorted(service["metrics"].items()):
                labels = {"service": service["service"], "metric_type": metric_type}
                latest.add_metric([service["service"], metric_type], figures["current"])
                for quantile, key in QUANTILES:
                    window.add_sample("telemetry_window", {**labels, "quantile": quantile}, figures[key])
                count = figures.get("count", 0)
                window.add_sample("telemetry_window_count", labels, count)
                window.add_sample("telemetry_window_sum", labels, figures["avg"] * count)
        yield latest
        yield window

    def alerts(self) -> Metric:
        firing = GaugeMetricFamily("telemetry_alerts_firing", "Alerts currently firing.", labels=["severity"])
        counts = dict.fromkeys((Alert.WARNING, Alert.CRITICAL), 0)
        for severity in Alert.objects.firing().values_list("severity", flat=True):
            counts[severity] = counts.get(severity, 0) + 1
        for severity, count in counts.items():
            firing.add_metric([severity], count)
        return firing

    def server(self) -> Iterator[Metric]:
        figures = stats.snapshot()
        for name, keys, documentation in COUNTERS:
            yield CounterMetricFamily(name, documentation, value=sum(figures.get(k, 0) for k in keys))
        yield GaugeMetricFamily(
            "telemetry_websocket_clients",
            "WebSocket clients connected to this process.",
            value=figures.get("ws_connections", 0),
        )
        latency = HistogramMetricFamily(
            "telemetry_http_request_duration_seconds", "Request latency in this process by URL route.", labels=["route"]
        )
        bounds = [*(str(b) for b in stats.LATENCY_BUCKETS), "+Inf"]
        for route, row in sorted(stats.latencies().items()):
            per_bucket, total = row[: len(bounds)], row[-1]
            running, buckets = 0.0, []
            for bound, count in zip(bounds, per_bucket, strict=True):
                running += count
                buckets.append((bound, running))
            latency.add_metric([route], buckets, sum_value=total)
        yield latency


registry = CollectorRegistry(auto_describe=False)
registry.register(TelemetryCollector())


def exposition() -> bytes:
    return generate_latest(registry)
