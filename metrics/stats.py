"""This process's own figures, as prometheus_client metrics: what it ingested, refused, broadcast and served.

/metrics/prometheus exposes REGISTRY after the figures it reads from the
database at scrape time (metrics/api/prometheus.py). Each is named
telemetry_<name> (a counter's sample ends in _total); the code increments
them by attribute (`stats.broadcasts.inc()`), so a misspelt name fails at
import, not silently. `mark`/`seconds_since` remember when something last
happened (a broadcast failure, an unreachable database): a moment, not a metric.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# The exposition keeps the samples it always had: no *_created series beside each counter.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=False)
_COUNTERS: dict[str, tuple[Counter, str]] = {}  # short name -> (counter, exposed name)


def _counter(short: str, name: str, documentation: str) -> Counter:
    counter = Counter(name, documentation, registry=REGISTRY)
    _COUNTERS[short] = (counter, name)
    return counter


# Ingestion
points_ingested = _counter(
    "points_ingested", "telemetry_points_ingested", "Points stored by this process (all ingestion paths)."
)
requests_rejected = _counter(
    "requests_rejected", "telemetry_requests_rejected", "JSON ingest requests rejected with 4xx by this process."
)
otlp_requests = _counter("otlp_requests", "telemetry_otlp_requests", "OTLP export requests received by this process.")
otlp_requests_rejected = _counter(
    "otlp_requests_rejected", "telemetry_otlp_requests_rejected", "OTLP export requests answered 4xx/5xx."
)
otlp_points_accepted = _counter("otlp_points_accepted", "telemetry_otlp_points_accepted", "OTLP data points stored.")
otlp_points_rejected = _counter(
    "otlp_points_rejected", "telemetry_otlp_points_rejected", "OTLP data points rejected (partial success)."
)
otlp_unknown_metrics = _counter(
    "otlp_unknown_metrics", "telemetry_otlp_unknown_metrics", "OTLP metrics ignored: name or unit not mapped."
)
rejected_cardinality = _counter(
    "rejected_cardinality", "telemetry_rejected_cardinality", "Requests refused by the series/service caps."
)
db_unavailable = _counter(
    "db_unavailable", "telemetry_db_unavailable", "Requests answered 503 because the database was unreachable."
)
ingest_groups = _counter("ingest_groups", "telemetry_ingest_groups", "Group commits of the ingest writer.")
ingest_group_jobs = _counter("ingest_group_jobs", "telemetry_ingest_group_jobs", "Requests stored by those commits.")
ingest_group_retries = _counter(
    "ingest_group_retries", "telemetry_ingest_group_retries", "Groups run again without a request abandoned late."
)
# Streaming
broadcasts = _counter("broadcasts", "telemetry_broadcasts", "Batches published to WebSocket clients.")
broadcast_failures = _counter(
    "broadcast_failures", "telemetry_broadcast_failures", "Broadcasts the channel layer failed to take."
)
broadcast_dropped = _counter(
    "broadcast_dropped", "telemetry_broadcast_dropped", "Broadcast messages dropped under backpressure."
)
fanout_subscribe_failures = _counter(
    "fanout_subscribe_failures",
    "telemetry_fanout_subscribe_failures",
    "Times the fan-out hub could not join the group.",
)
fanout_receive_errors = _counter(
    "fanout_receive_errors", "telemetry_fanout_receive_errors", "Failed receives of the fan-out hub from the layer."
)
ws_closed_slow = _counter(
    "ws_closed_slow", "telemetry_websocket_closed_slow", "WebSocket clients closed for not keeping up."
)
ws_frames = _counter("ws_frames", "telemetry_websocket_frames", "WebSocket frames sent.")
ws_lag_notices = _counter("ws_lag_notices", "telemetry_websocket_lag_notices", "Lag notices sent to slow clients.")
ws_refused_rate = _counter(
    "ws_refused_rate", "telemetry_websocket_refused_rate", "WebSocket clients closed for sending too many messages."
)
ws_refused_too_big = _counter(
    "ws_refused_too_big", "telemetry_websocket_refused_too_big", "WebSocket clients closed for an oversized message."
)
ws_sender_errors = _counter(
    "ws_sender_errors", "telemetry_websocket_sender_errors", "WebSocket senders that failed (the client reconnects)."
)
ws_summary_encodes = _counter(
    "ws_summary_encodes",
    "telemetry_websocket_tick_encodes",
    "Summary frames encoded: one per tick and distinct filter, shared by its subscribers.",
)
ws_summary_frames = _counter(
    "ws_summary_frames", "telemetry_websocket_tick_frames", "Summary frames queued for WebSocket clients."
)
ws_connections = Gauge("telemetry_websocket_clients", "WebSocket clients connected to this process.", registry=REGISTRY)
# By route (/metrics/query, /metrics/ingest, ...), in Prometheus' default buckets.
request_seconds = Histogram(
    "telemetry_http_request_duration_seconds",
    "Request latency in this process by URL route.",
    ["route"],
    registry=REGISTRY,
)

_marks: dict[str, float] = {}


def mark(name: str) -> None:
    """Remember when something last happened (e.g. a broadcast failure)."""
    _marks[name] = time.monotonic()


def seconds_since(name: str) -> float | None:
    at = _marks.get(name)
    return None if at is None else time.monotonic() - at


def observe(route: str, seconds: float) -> None:
    request_seconds.labels(route).observe(seconds)


def snapshot() -> dict[str, float]:
    """Every counter's value, and the connected clients, by short name (health, tests)."""
    values = {short: REGISTRY.get_sample_value(f"{name}_total") or 0.0 for short, (_, name) in _COUNTERS.items()}
    values["ws_connections"] = REGISTRY.get_sample_value("telemetry_websocket_clients") or 0.0
    return values


def reset() -> None:
    """Back to zero (tests: one process runs many)."""
    for counter, _ in _COUNTERS.values():
        counter.reset()
    ws_connections.set(0)
    request_seconds.clear()
    _marks.clear()
