"""GET /metrics/prometheus: the text format, what it contains, and promtool's verdict on it."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from prometheus_client.parser import text_string_to_metric_families

from metrics.api import prometheus as prom
from metrics.models import Point
from metrics.series import rollups

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


def test_it_exposes_the_windows_percentiles_as_a_summary(ingested, scrape):
    with time_machine.travel(NOW, tick=False):
        _, samples = scrape()
    series = {"service": "api", "metric_type": "latency"}
    # Merged minute sketches: within their 1 % relative accuracy of the exact answer.
    assert samples[("telemetry_window", labels(**series, quantile="0.5"))] == pytest.approx(300.0, rel=0.01)
    assert samples[("telemetry_window", labels(**series, quantile="0.95"))] == pytest.approx(1280.0, rel=0.01)
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


# --- Cost: the window comes from rollups and is cached briefly -----------------------


@pytest.fixture
def fresh_window():
    prom.clear_cache()
    yield
    prom.clear_cache()


def window_count(samples: dict, service: str = "api", metric_type: str = "latency") -> float | None:
    return samples.get(("telemetry_window_count", labels(service=service, metric_type=metric_type)))


def test_the_window_is_read_from_rollups_not_raw_points(ingested, scrape, fresh_window):
    with time_machine.travel(NOW, tick=False):
        rollups.roll_up()
        Point.objects.filter(timestamp__lt=datetime(2026, 11, 28, 12, 0, tzinfo=UTC)).delete()
        _, samples = scrape()
    assert window_count(samples) == 5
    assert samples[("telemetry_window_sum", labels(service="api", metric_type="latency"))] == pytest.approx(2500.0)


def test_a_scrape_after_roll_up_reads_no_raw_range_only_one_seek_per_series(ingested, client, fresh_window):
    with time_machine.travel(NOW, tick=False):
        rollups.roll_up()
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/metrics/prometheus").status_code == 200
    raw_reads = [q["sql"] for q in queries if "metrics_point" in q["sql"]]
    assert len(raw_reads) == 1
    assert "LIMIT 1" in raw_reads[0]  # the latest value of each series, by index seek


def test_the_current_minute_counts_for_the_latest_value_but_not_the_window(client, scrape, fresh_window):
    point = {"timestamp": "2026-11-28T12:00:20Z", "service": "new", "metric_type": "cpu", "value": 42.0}
    with time_machine.travel("2026-11-28T12:00:30Z", tick=False):
        assert client.post("/metrics/ingest", point, content_type="application/json").status_code == 200
        _, samples = scrape()
    assert samples[("telemetry_value", labels(service="new", metric_type="cpu"))] == 42.0
    assert window_count(samples, "new", "cpu") is None


def test_the_window_is_cached_for_ten_seconds(ingested, client, scrape, fresh_window):
    late = {"timestamp": "2026-11-28T11:58:00Z", "service": "api", "metric_type": "latency", "value": 250.0}
    with time_machine.travel(NOW, tick=False) as clock:
        assert window_count(scrape()[1]) == 5
        assert client.post("/metrics/ingest", late, content_type="application/json").status_code == 200
        clock.shift(9)
        assert window_count(scrape()[1]) == 5
        clock.shift(2)
        assert window_count(scrape()[1]) == 6


def test_a_new_minute_or_a_roll_up_refreshes_the_window_at_once(ingested, client, scrape, fresh_window):
    late = {"timestamp": "2026-11-28T11:58:00Z", "service": "api", "metric_type": "latency", "value": 250.0}
    with time_machine.travel(NOW, tick=False):
        assert window_count(scrape()[1]) == 5
        assert client.post("/metrics/ingest", late, content_type="application/json").status_code == 200
        rollups.roll_up()
        assert window_count(scrape()[1]) == 6
