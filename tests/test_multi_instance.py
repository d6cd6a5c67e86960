"""Two daphne instances sharing one PostgreSQL database and one Redis behave as one system.

Both servers are real processes (tests/live.py) pointing at a database created
and migrated for this module only, and at the machine's Redis. These tests are
about scale-out, so they run in both suite modes whenever PostgreSQL and Redis
are reachable; they skip with a reason otherwise (and fail under
REQUIRE_SCALE_OUT=1, which .ci/run sets). Redis pub/sub is shared with other
test runs, so each test uses service names of its own and filters on them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest

from tests import pgtools
from tests.live import ROOT, LiveServer, free_port
from tests.services import require_service
from tests.support.ws import connect, frames_until, next_frame, subscribe

pytestmark = [pytest.mark.live, pytest.mark.postgres]


def require_scale_out() -> None:
    require_service("PostgreSQL and Redis", pgtools.scale_out_available(), pgtools.SKIP_REASON)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(A, B, database_url): two servers on one dedicated database and one Redis."""
    require_scale_out()
    tmp = tmp_path_factory.mktemp("cluster")
    with pgtools.dedicated_database("telemetry_multi") as url:
        env = {
            "DATABASE_URL": url,
            "REDIS_URL": pgtools.REDIS_URL,
            "DEBUG": "1",
            "REQUIRE_API_KEY": "0",
            "DASHBOARD_REQUIRE_LOGIN": "0",
            "TELEMETRY_SCHEDULER": "0",
        }
        a = LiveServer(tmp, migrate_first=False, **env).start()
        try:
            b = LiveServer(tmp, migrate_first=False, **env).start()
            try:
                yield a, b, url
            finally:
                b.stop()
        finally:
            a.stop()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def point(service: str, metric_type: str = "latency", value: float = 10.0, **tags) -> dict:
    return {"timestamp": now_iso(), "service": service, "metric_type": metric_type, "value": value, "tags": tags}


def ingest(server: LiveServer, body) -> httpx.Response:
    return httpx.post(server.url + "/metrics/ingest", json=body, timeout=30)


async def subscribed(server: LiveServer | str, service: str):
    """A WebSocket client of `server` (or of the proxy at that base URL) subscribed to `service`."""
    ws = await connect(server)
    assert (await next_frame(ws))["type"] == "initial"
    await subscribe(ws, services=[service])
    return ws


def test_a_point_ingested_through_a_reaches_a_websocket_client_of_b(cluster):
    a, b, _ = cluster
    service = unique("fanout")

    async def scenario():
        ws = await subscribed(b, service)
        try:
            response = await asyncio.to_thread(ingest, a, point(service, value=42.5, host="a"))
            assert response.status_code == 200, response.text
            frames = await frames_until(ws, lambda fs: any(f["type"] == "metric" for f in fs))
        finally:
            await ws.close()
        metrics = [f["data"] for f in frames if f["type"] == "metric"]
        assert metrics, f"no metric frame reached instance B: {frames}"
        assert metrics[0]["service"] == service and metrics[0]["value"] == 42.5 and metrics[0]["tags"] == {"host": "a"}

    asyncio.run(scenario())


def test_an_alert_opened_through_a_is_the_same_alert_when_b_sees_the_breach(cluster):
    a, b, url = cluster
    service = unique("alerting")
    first = ingest(a, point(service, value=2000.0))
    assert first.status_code == 200, first.text
    opened = first.json()["alert"]
    assert opened["state"] == "firing" and opened["severity"] == "critical"
    second = ingest(b, point(service, value=2500.0))
    assert second.status_code == 200, second.text
    joined = second.json()["alert"]
    assert joined["id"] == opened["id"]
    assert joined["breach_count"] == 2 and joined["latest_value"] == 2500.0
    firing = pgtools.count(
        url, "SELECT COUNT(*) FROM metrics_alert WHERE service = %s AND state = 'firing'", (service,)
    )
    assert firing == 1


def test_simultaneous_breaches_through_both_instances_open_one_alert(cluster):
    a, b, url = cluster
    rounds = 8
    services = [unique("race") for _ in range(rounds)]

    def breach(args):
        server, service, value = args
        return ingest(server, [point(service, value=value), point(service, "cpu", value=99.0)])

    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [(srv, svc, v) for svc in services for srv, v in ((a, 1500.0), (b, 1600.0))]
        responses = list(pool.map(breach, jobs))
    assert [r.status_code for r in responses] == [200] * len(jobs), [r.text for r in responses if r.status_code != 200]
    for service in services:
        ids = {r.json()["alert"]["id"] for r in responses if r.json()["alert"]["service"] == service}
        assert len(ids) == 1, f"{service}: two instances opened {ids}"
        for metric_type in ("latency", "cpu"):
            rows = pgtools.count(
                url,
                "SELECT COUNT(*) FROM metrics_alert WHERE service = %s AND metric_type = %s",
                (service, metric_type),
            )
            assert rows == 1, f"{service}/{metric_type} has {rows} alerts"


def test_concurrent_ingestion_through_both_instances_loses_nothing(cluster):
    a, b, url = cluster
    tag = uuid.uuid4().hex[:8]
    services = [f"load-{tag}-{i}" for i in range(4)]
    workers, requests_each, batch = 4, 15, 20

    def work(worker: int) -> int:
        server = a if worker % 2 == 0 else b
        accepted = 0
        for n in range(requests_each):
            body = [
                point(services[(worker + i) % len(services)], "throughput", 500.0 + i, worker=str(worker), n=n)
                for i in range(batch)
            ]
            response = ingest(server, body)
            assert response.status_code == 200, response.text
            accepted += response.json()["accepted"]
        return accepted

    with ThreadPoolExecutor(max_workers=workers) as pool:
        accepted = sum(pool.map(work, range(workers)))
    assert accepted == workers * requests_each * batch
    stored = pgtools.count(url, "SELECT COUNT(*) FROM metrics_point WHERE service = ANY(%s)", (services,))
    assert stored == accepted
    for server in (a, b):
        answer = httpx.post(
            server.url + "/metrics/query",
            json={"services": services, "aggregation": "raw", "limit": 100_000},
            timeout=30,
        ).json()
        assert len(answer["data"]) == accepted and answer["truncated"] is False
    series = pgtools.count(url, "SELECT COUNT(*) FROM metrics_series WHERE service = ANY(%s)", (services,))
    assert series == pgtools.count(
        url, "SELECT COUNT(DISTINCT (service, tags::text)) FROM metrics_point WHERE service = ANY(%s)", (services,)
    )


def figure(server: LiveServer, name: str) -> float:
    """One unlabelled sample of a server's own /metrics/prometheus (process-local counters)."""
    text = httpx.get(server.url + "/metrics/prometheus", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exposed by {server.url}")


def test_nginx_proxies_http_static_files_and_websockets_to_both_instances(cluster, tmp_path):
    from tests.test_deploy_files import nginx_binary, nginx_test_config

    nginx = nginx_binary()
    a, b, _ = cluster
    static_root = tmp_path / "static"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(DEBUG="1", STATIC_ROOT=str(static_root), TELEMETRY_DATA_DIR=str(tmp_path))
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    port = free_port()
    conf = nginx_test_config(tmp_path, (a.port, b.port), port, static_root)
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf)], stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/metrics/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert httpx.get(base + "/metrics/health", timeout=5).json()["checks"]["database"] == "ok"
        css = httpx.get(base + "/static/admin/css/base.css", timeout=5)
        assert css.status_code == 200 and "max-age" in css.headers["cache-control"]
        service = unique("proxied")

        async def scenario():
            clients_before = {s.port: figure(s, "telemetry_websocket_clients") for s in (a, b)}
            ingested_before = {s.port: figure(s, "telemetry_points_ingested_total") for s in (a, b)}
            ws = await subscribed(base, service)
            try:
                holder = {s.port for s in (a, b) if figure(s, "telemetry_websocket_clients") > clients_before[s.port]}
                for _ in range(4):
                    response = await asyncio.to_thread(
                        httpx.post, base + "/metrics/ingest", json=point(service, "cpu", 12.0), timeout=10
                    )
                    assert response.status_code == 200, response.text
                frames = await frames_until(ws, lambda fs: sum(f["type"] == "metric" for f in fs) >= 4)
            finally:
                await ws.close()
            assert sum(f["type"] == "metric" for f in frames) == 4, frames
            # Which process answered: each one's own counters, read from it directly.
            served = {s.port: figure(s, "telemetry_points_ingested_total") - ingested_before[s.port] for s in (a, b)}
            assert sum(served.values()) == 4, served
            assert len(holder) == 1, (clients_before, holder)
            # least_conn sends the posts away from the instance holding the WebSocket, so the
            # frames crossed Redis from one instance to the other: nginx reached both.
            assert {p for p, n in served.items() if n} | holder == {a.port, b.port}, (served, holder)
            assert any(n for p, n in served.items() if p not in holder), (served, holder)

        asyncio.run(scenario())
    finally:
        proc.terminate()
        proc.wait(10)
