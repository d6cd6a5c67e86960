"""Redis outage (PostgreSQL + Redis mode): ingestion keeps working, streaming comes back by itself.

The test runs its own redis-server on a free port (the shared one stays up for
everybody else) and its own database on the shared PostgreSQL. Redis is
stopped mid-stream: every ingest still answers 200 and is stored, and
/metrics/health reports the channel layer degraded. Redis is started again on
the same port: WebSocket clients (reconnecting if their socket was closed)
receive new points again, with no server restart.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid

import httpx
import orjson
import pytest
import websockets
from websockets.typing import Origin

from tests.faultkit import OwnRedis
from tests.live import LiveServer
from tests.pgtools import PG_URL, count, dedicated_database, reachable
from tests.services import require_service
from tests.support.ws import metric_values

pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def stack(tmp_path):
    require_service("PostgreSQL", reachable(PG_URL, 5432), f"nothing answers at {PG_URL}")
    require_service("Redis", shutil.which("redis-server") is not None, "redis-server is not installed")
    redis = OwnRedis()
    redis.start()
    try:
        with dedicated_database("telemetry_redis_outage") as db_url:
            env = {
                "DATABASE_URL": db_url,
                "REDIS_URL": redis.url,
                "CHANNEL_LAYER_PREFIX": f"outage{uuid.uuid4().hex[:8]}",
                "MAX_SERIES_PER_SERVICE": "100000",
                "DB_ANSWER_TIMEOUT_SECONDS": "30",
            }
            with LiveServer(tmp_path, migrate_first=False, **env) as server:
                yield server, redis, db_url
    finally:
        redis.stop()


def _point(service: str, value: float) -> dict:
    return {"service": service, "metric_type": "cpu", "value": value}


async def _open(server: LiveServer, service: str):  # type: ignore[no-untyped-def]
    ws = await websockets.connect(server.ws_url, origin=Origin(server.url), open_timeout=20, max_size=None)
    assert orjson.loads(await asyncio.wait_for(ws.recv(), 15))["type"] == "initial"
    await ws.send(orjson.dumps({"action": "subscribe", "services": [service]}).decode())
    while orjson.loads(await asyncio.wait_for(ws.recv(), 15))["type"] != "subscribed":
        pass
    return ws


async def test_ingestion_survives_a_redis_outage_and_streaming_resumes(stack):
    server, redis, db_url = stack
    service = f"redis-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        ws = await _open(server, service)
        assert (await http.post("/metrics/ingest", json=_point(service, 1.0))).status_code == 200
        assert 1.0 in await metric_values(ws, 15)

        redis.stop()
        # A dead channel layer must not hold up the answer (the client's 30 s
        # timeout is the bound; how fast is not raced here).
        for i in range(20):
            response = await http.post("/metrics/ingest", json=_point(service, 10.0 + i))
            assert response.status_code == 200, response.text
        assert count(db_url, "SELECT COUNT(*) FROM metrics_point WHERE service = %s", (service,)) == 21
        # Health reuses a check for HEALTH_CACHE_SECONDS: wait for the outage to show, bounded.
        async with asyncio.timeout(60):
            while not (health := (await http.get("/metrics/health")).json())["checks"]["channel_layer"].startswith(
                "degraded"
            ):
                await asyncio.sleep(0.2)
        assert health["checks"]["database"] == "ok"
        assert health["checks"]["channel_layer"].startswith("degraded")
        assert health["status"] == "degraded"

        redis.start()
        received: list[float] = []
        deadline = time.monotonic() + 45
        value = 50.0
        while time.monotonic() < deadline and not received:
            value += 1
            assert (await http.post("/metrics/ingest", json=_point(service, value))).status_code == 200
            try:
                received = [v for v in await metric_values(ws, 2) if v > 50]
            except websockets.ConnectionClosed:
                ws = await _open(server, service)  # a client reconnects, as the dashboard does
        await ws.close()
        assert received, "WebSocket clients receive new points after Redis returns, without a server restart"
        assert count(db_url, "SELECT COUNT(*) FROM metrics_point WHERE service = %s", (service,)) == 21 + (value - 50)
