"""GET /metrics/health: 200 healthy with its checks, 503 unhealthy when the database is gone."""

from __future__ import annotations

import os

import httpx
import pytest
from django.db import OperationalError

from metrics.api import views
from metrics.models import Service
from tests.live import LiveServer, free_port

URL = "/metrics/health"


@pytest.mark.django_db
def test_it_reports_healthy_with_its_checks(client):
    Service.objects.create(name="api", first_seen="2026-01-01T00:00:00Z", last_seen="2026-01-01T00:00:00Z")
    response = client.get(URL)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["services_count"] == 1
    assert body["checks"] == {"database": "ok", "channel_layer": "ok"}
    assert body["timestamp"].endswith("Z")
    assert body["version"]


@pytest.mark.django_db
def test_it_answers_503_unhealthy_when_the_database_fails(client, monkeypatch):
    class Broken:
        def cursor(self):
            raise OperationalError("connection refused")

    monkeypatch.setattr(views, "connection", Broken())
    response = client.get(URL)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"].startswith("error")
    assert body["services_count"] == 0


@pytest.mark.django_db
def test_other_methods_are_405(client):
    assert client.post(URL).status_code == 405


@pytest.mark.live
def test_a_real_server_with_an_unreachable_database_answers_503(tmp_path):
    """A daphne whose DATABASE_URL points at a closed port: health says so, fast, and the server stays up."""
    env = {"DATABASE_URL": f"postgres://postgres@127.0.0.1:{free_port()}/nothing", "DATABASE_CONNECT_TIMEOUT": "1"}
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = os.environ["REDIS_URL"]
    with LiveServer(tmp_path, migrate_first=False, **env) as server:
        response = httpx.get(server.url + URL, timeout=20)
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unhealthy"
        assert body["checks"]["database"].startswith("error")
        # Ingest is refused with 503 in the error shape, not a 500.
        ingest = httpx.post(
            server.url + "/metrics/ingest",
            json={"service": "api", "metric_type": "latency", "value": 1},
            timeout=20,
        )
        assert ingest.status_code == 503, ingest.text
        assert ingest.json()["details"][0]["field"] == "database"


@pytest.mark.django_db(transaction=True)
def test_concurrent_polls_share_one_database_and_channel_layer_check(monkeypatch):
    """50 pollers at once cost one check, not 50 (the older service answered them 3x faster)."""
    import asyncio

    from django.test import AsyncClient

    from metrics.live import publish as broadcast

    probes = []
    real_probe = broadcast.probe

    async def counted_probe(*args, **kwargs):
        probes.append(1)
        return await real_probe(*args, **kwargs)

    monkeypatch.setattr(broadcast, "probe", counted_probe)

    async def poll_50():
        client = AsyncClient()
        return await asyncio.gather(*(client.get(URL) for _ in range(50)))

    answers = asyncio.run(poll_50())
    assert [a.status_code for a in answers] == [200] * 50
    assert len(probes) == 1


@pytest.mark.django_db
def test_a_recent_result_is_reused_until_it_is_older_than_the_cache(client, monkeypatch, telemetry):
    from metrics.live import publish as broadcast

    probes = []

    async def counted_probe(*args, **kwargs):
        probes.append(1)
        return "ok"

    monkeypatch.setattr(broadcast, "probe", counted_probe)
    telemetry(HEALTH_CACHE_SECONDS=3600)
    client.get(URL)
    client.get(URL)
    assert len(probes) == 1
    views.recent_health.at -= 3601  # the cached result is now an hour old
    client.get(URL)
    assert len(probes) == 2


@pytest.mark.django_db
def test_a_failing_check_is_not_reused_so_recovery_shows_on_the_next_poll(client, monkeypatch, telemetry):
    from metrics.live import publish as broadcast

    answers = iter(["degraded: ConnectionError", "ok"])

    async def flaky_probe(*args, **kwargs):
        return next(answers)

    monkeypatch.setattr(broadcast, "probe", flaky_probe)
    telemetry(HEALTH_CACHE_SECONDS=3600)
    assert client.get(URL).json()["status"] == "degraded"
    assert client.get(URL).json()["status"] == "healthy"
