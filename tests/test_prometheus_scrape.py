"""A real Prometheus server scrapes a real Telemetry server and answers with the ingested values."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.live import ROOT, LiveServer, free_port
from tests.support.servers import own_server

pytestmark = [pytest.mark.live, pytest.mark.slow]


def create_key(server: LiveServer, scopes: str) -> str:
    code = f"from metrics.models import ApiKey; print(ApiKey.generate('prometheus', scopes={scopes!r})[1])"
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def last_complete_minute() -> str:
    """A timestamp inside the previous minute: telemetry_window covers complete minutes only."""
    now = datetime.now(UTC)
    return (now.replace(second=30, microsecond=0) - timedelta(minutes=1)).isoformat()


@contextlib.contextmanager
def prometheus(tmp_path: Path, target_port: int, bearer: str | None = None) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            "the prometheus server is not installed: apt-get install prometheus (Debian package), as .ci/run does"
        )
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: telemetry\n    metrics_path: /metrics/prometheus\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        + (f"    authorization:\n      type: Bearer\n      credentials: {bearer}\n" if bearer else "")
    )
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def query_until(base: str, promql: str, timeout: float = 30.0) -> list[dict]:
    """Poll Prometheus' query API until the expression has a result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Until its storage is ready Prometheus answers 503 with a plain-text body.
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = httpx.get(base + "/api/v1/query", params={"query": promql}, timeout=5)
            answer = response.json() if response.status_code == 200 else {}
            if answer.get("status") == "success" and answer["data"]["result"]:
                return answer["data"]["result"]
        time.sleep(0.5)
    raise AssertionError(f"Prometheus returned nothing for {promql} within {timeout} s")


def test_a_real_prometheus_scrapes_the_ingested_values(tmp_path):
    if shutil.which("prometheus") is None:
        pytest.skip(
            "the prometheus server is not installed: apt-get install prometheus (Debian package), as .ci/run does"
        )
    with own_server(tmp_path, "telemetry_prom") as server:
        now = last_complete_minute()
        points = [
            {"timestamp": now, "service": "scraped", "metric_type": "latency", "value": 123.5},
            {"timestamp": now, "service": "scraped", "metric_type": "cpu", "value": 97.0},
        ]
        assert httpx.post(server.url + "/metrics/ingest", json=points, timeout=20).status_code == 200
        with prometheus(tmp_path, server.port) as base:
            (latency,) = query_until(base, 'telemetry_value{service="scraped",metric_type="latency"}')
            assert float(latency["value"][1]) == 123.5
            assert latency["metric"]["job"] == "telemetry"
            (p99,) = query_until(base, 'telemetry_window{service="scraped",metric_type="cpu",quantile="0.99"}')
            assert float(p99["value"][1]) == 97.0
            (critical,) = query_until(base, 'telemetry_alerts_firing{severity="critical"}')
            assert float(critical["value"][1]) == 1
            (ingested,) = query_until(base, "telemetry_points_ingested_total")
            assert float(ingested["value"][1]) == 2
            (up,) = query_until(base, 'up{job="telemetry"}')
            assert float(up["value"][1]) == 1


def test_a_real_prometheus_scrapes_a_login_required_server_with_a_read_key(tmp_path):
    if shutil.which("prometheus") is None:
        pytest.skip(
            "the prometheus server is not installed: apt-get install prometheus (Debian package), as .ci/run does"
        )
    with own_server(tmp_path, "telemetry_prom", DASHBOARD_REQUIRE_LOGIN="1") as server:
        key = create_key(server, "read")
        assert httpx.get(server.url + "/metrics/prometheus", timeout=20).status_code == 401
        point = {"timestamp": last_complete_minute(), "service": "locked", "metric_type": "cpu", "value": 12.0}
        assert httpx.post(server.url + "/metrics/ingest", json=point, timeout=20).status_code == 200
        with prometheus(tmp_path, server.port, bearer=key) as base:
            (cpu,) = query_until(base, 'telemetry_value{service="locked",metric_type="cpu"}')
            assert float(cpu["value"][1]) == 12.0
            (up,) = query_until(base, 'up{job="telemetry"}')
            assert float(up["value"][1]) == 1
