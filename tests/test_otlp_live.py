"""The real OpenTelemetry SDK and OTLP/HTTP exporter against a real daphne server.

A histogram, a gauge and a counter exported by the SDK must show up as points,
percentiles and an alert through /metrics/query, /metrics/alerts and /ws/metrics.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from tests.live import LiveServer
from tests.support.servers import own_server
from tests.support.ws import connect, frames_until, next_frame

pytestmark = [pytest.mark.live, pytest.mark.slow]

SERVICE = "checkout"
SECONDS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]


def meter_provider(url: str) -> MeterProvider:
    exporter = OTLPMetricExporter(endpoint=url + "/v1/metrics", timeout=20)
    # A long interval: the test exports explicitly with force_flush.
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    return MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": SERVICE}))


def record(provider: MeterProvider) -> None:
    meter = provider.get_meter("tests.otlp")
    duration = meter.create_histogram(
        "http.server.request.duration", unit="s", explicit_bucket_boundaries_advisory=SECONDS_BUCKETS
    )
    for _ in range(90):
        duration.record(0.1, {"http.route": "/pay"})
    for _ in range(10):
        duration.record(2.0, {"http.route": "/pay"})

    def cpu(options: CallbackOptions) -> list[Observation]:
        return [Observation(0.97)]  # 97 %: over the critical threshold (95 %)

    meter.create_observable_gauge("system.cpu.utilization", callbacks=[cpu], unit="1")
    meter.create_counter("http.server.requests", unit="{request}").add(600, {"http.route": "/pay"})


def broadcast(frames: list[dict]) -> tuple[list[dict], list[dict]]:
    """The points and the alerts the frames carried."""
    points: list[dict] = []
    alerts: list[dict] = []
    for frame in frames:
        if frame["type"] == "metric":
            points.append(frame["data"])
        elif frame["type"] == "metrics":
            points.extend(frame["data"])
        elif frame["type"] == "alert":
            alerts.append(frame["data"])
    return points, alerts


def has_points_and_an_alert(frames: list[dict]) -> bool:
    points, alerts = broadcast(frames)
    return {p["metric_type"] for p in points} >= {"latency", "cpu"} and bool(alerts)


async def watch(server: LiveServer, provider: MeterProvider) -> tuple[list[dict], list[dict]]:
    """Connect, export with the SDK, and collect the broadcast points and alerts for SERVICE."""
    async with connect(server) as ws:
        first = await next_frame(ws)
        assert first["type"] == "initial"
        assert await asyncio.to_thread(provider.force_flush, 30_000)
        points, alerts = broadcast(await frames_until(ws, has_points_and_an_alert))
    return [p for p in points if p["service"] == SERVICE], [a for a in alerts if a["service"] == SERVICE]


def test_the_opentelemetry_sdk_exports_points_percentiles_and_an_alert(tmp_path):
    with own_server(tmp_path, "telemetry_otlp") as server:
        provider = meter_provider(server.url)
        try:
            record(provider)
            ws_points, ws_alerts = asyncio.run(watch(server, provider))
        finally:
            provider.shutdown(timeout_millis=10_000)

        raw = httpx.get(server.url + "/metrics/query", params={"services": SERVICE}, timeout=20).json()["data"]
        by_type: dict[str, dict] = {}
        for point in raw:  # the first export; shutdown() exported once more
            by_type.setdefault(point["metric_type"], point)
        assert by_type["latency"]["value"] == pytest.approx(290.0)  # the mean of 90 x 100 ms and 10 x 2 s
        assert by_type["latency"]["tags"] == {"http.route": "/pay"}
        assert by_type["cpu"]["value"] == pytest.approx(97.0)
        rates = [p["value"] for p in raw if p["metric_type"] == "throughput"]
        assert rates[0] > 0  # 600 requests over the SDK's lifetime so far
        assert rates[1:] in ([], [0.0])  # the shutdown export: the same cumulative total, no new requests
        # The shutdown export repeats the same cumulative histogram: no new observations, no new point.
        assert [p["value"] for p in raw if p["metric_type"] == "latency"] == [pytest.approx(290.0)]

        # Over more than an hour the answer merges sketches: the histogram's buckets, not its mean.
        end = time.time() + 60
        bucketed = httpx.post(
            server.url + "/metrics/query",
            json={
                "start_time": end - 7200,
                "end_time": end,
                "services": [SERVICE],
                "metric_types": ["latency"],
                "aggregation": "1h",
            },
            timeout=20,
        ).json()
        assert bucketed["source"] == "rollup"
        latency = bucketed["data"]
        assert sum(b["count"] for b in latency) == 100
        # 90 observations of 100 ms sit in the (75, 100] ms bucket, spread through it as Prometheus would.
        assert 75 < max(b["p50"] for b in latency) <= 101
        assert 1000 < max(b["p99"] for b in latency) <= 2000 * 1.01

        alerts = httpx.get(server.url + "/metrics/alerts", params={"service": SERVICE}, timeout=20).json()["alerts"]
        # (A throughput alert may fire too: the shutdown export reports 0 new requests, below the 50 req/s floor.)
        assert ("cpu", "critical", "firing") in [(a["metric_type"], a["severity"], a["state"]) for a in alerts]

    assert {p["metric_type"] for p in ws_points} >= {"latency", "cpu", "throughput"}
    assert ("cpu", "critical") in [(a["metric_type"], a["severity"]) for a in ws_alerts]
