"""GET /metrics/prometheus: the text format, what it contains, and promtool's verdict on it."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import time_machine
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.django_db

NOW = "2026-11-28T12:00:00Z"


@pytest.fixture
def scrape(client):
    def get() -> tuple[str, dict]:
        response = client.get("/metrics/prometheus")
        assert response.status_code == 200
        text = response.content.decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return text, samples

    return get


@pytest.fixture
def ingested(client):
    points = [
        {"timestamp": f"2026-11-28T11:59:{10 + i:02d}Z", "service": "api", "metric_type": "latency", "value": v}
        for i, v in enumerate([100.0, 200.0, 300.0, 400.0, 1500.0])
    ] + [{"timestamp": "2026-11-28T11:59:30Z", "service": "db", "metric_type": "cpu", "value": 85.0}]
    with time_machine.travel(NOW, tick=False):
        response = client.post("/metrics/ingest", points, content_type="application/json")
        assert response.status_code == 200
        yield


def labels(**values: str) -> tuple:
    return tuple(sorted(values.items()))


def test_it_uses_the_prometheus_text_format(client):
    response = client.get("/metrics/prometheus")
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"


def test_it_exposes_the_latest_value_of_every_series(ingested, scrape):
    with time_machine.travel(NOW, tick=False):
        _, samples = scrape()
    assert samples[("telemetry_value", labels(service="api", metric_type="latency"))] == 1500.0
    assert samples[("telemetry_value", labels(service="db", metric_type="cpu"))] == 85.0


def test_it_exposes_the_current_percentiles_as_a_summary(ingested, scrape):
    with time_machine.travel(NOW, tick=False):
        _, samples = scrape()
    series = {"service": "api", "metric_type": "latency"}
    assert samples[("telemetry_window", labels(**series, quantile="0.5"))] == 300.0
    assert samples[("telemetry_window", labels(**series, quantile="0.95"))] == pytest.approx(1280.0)
    assert samples[("telemetry_window_count", labels(**series))] == 5
    assert samples[("telemetry_window_sum", labels(**series))] == pytest.approx(2500.0)


def test_it_exposes_firing_alerts_per_severity(ingested, scrape):
    with time_machine.travel(NOW, tick=False):
        _, samples = scrape()
    assert samples[("telemetry_alerts_firing", labels(severity="critical"))] == 1  # latency 1500 ms
    assert samples[("telemetry_alerts_firing", labels(severity="warning"))] == 1  # cpu 85 %


def test_it_exposes_the_servers_own_figures(ingested, client, scrape):
    client.post(
        "/metrics/ingest", {"service": "api", "metric_type": "nope", "value": 1}, content_type="application/json"
    )
    _, samples = scrape()
    assert samples[("telemetry_points_ingested_total", ())] == 6
    assert samples[("telemetry_requests_rejected_total", ())] == 1
    assert samples[("telemetry_websocket_clients", ())] == 0
    assert ("telemetry_broadcast_dropped_total", ()) in samples
    assert samples[("telemetry_http_request_duration_seconds_count", labels(route="/metrics/ingest"))] == 2
    assert samples[("telemetry_http_request_duration_seconds_bucket", labels(route="/metrics/ingest", le="+Inf"))] == 2


def test_stale_series_drop_out_of_the_exposition(ingested, scrape):
    with time_machine.travel("2026-11-28T13:00:00Z", tick=False):
        _, samples = scrape()
    assert not [key for key in samples if key[0] == "telemetry_value"]


def test_promtool_accepts_the_output(ingested, scrape):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed: apt-get install prometheus (Debian package), as .ci/run does")
    with time_machine.travel(NOW, tick=False):
        text, _ = scrape()
    assert "telemetry_window" in text
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.decode().strip() == ""  # no lint complaints either
