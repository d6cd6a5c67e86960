"""Fan-out paths a healthy stream never takes: backpressure, a stalled client, a failing sender, Redis going away.

- A client that stops reading makes daphne's write buffer back up; the server
  holds back, the connection's outbox drops the oldest updates, and when the
  client reads again it gets a "lag" notice and the newest points (real daphne,
  real `websockets` client that stops reading at the TCP level).
- A client that stays stalled for WS_STALL_TIMEOUT_SECONDS is closed with
  4008 and cut off.
- A sender that fails closes its connection with 4011 (the client reconnects)
  and is counted; the process keeps serving the others.
- The hub's subscription comes back by itself when Redis returns, on the
  default SQLite setup with a Redis layer (the PostgreSQL run has its own
  outage test): this runs in the default `make test`, and fails rather than
  skips under REQUIRE_SCALE_OUT=1 when redis-server is missing.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest
import websockets
from channels.testing import WebsocketCommunicator
from django.db import connections
from websockets.typing import Origin

from metrics import stats
from metrics.live import fanout, protocol
from metrics.live import publish as broadcast
from telemetry_project.asgi import application
from tests.faultkit import OwnRedis
from tests.live import LiveServer
from tests.services import require_service
from tests.support.ws import metric_values, next_frame, subscribe

# A point of ~3 KB: a few thousand of them fill any socket buffer between server and client.
BIG_TAGS = {f"k{i}": "x" * 250 for i in range(12)}
PER_REQUEST = 50


@contextmanager
def live_server(tmp_path: Path, **env: str) -> Iterator[LiveServer]:
    base = {
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "REQUIRE_API_KEY": "0",
        "MAX_SERIES_PER_SERVICE": "100000",
        "TELEMETRY_SCHEDULER": "0",
        "DB_ANSWER_TIMEOUT_SECONDS": "30",
    }
    with LiveServer(tmp_path, env={**base, **env}) as server:
        yield server


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def open_client(server: LiveServer, service: str, **kwargs):
    ws = await websockets.connect(server.ws_url, origin=Origin(server.url), max_size=None, open_timeout=20, **kwargs)
    assert (await next_frame(ws))["type"] == "initial"
    await subscribe(ws, services=[service], batch=True)
    return ws


async def open_stuck_client(server: LiveServer, service: str):
    """A subscribed client that then stops reading: a fixed receive buffer and a one-message queue.

    64 KiB, not autotuned (up to tens of MB), so a few MB back up to the server; not tiny either,
    or reading the backlog afterwards crawls one small TCP window per delayed ACK.
    """
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # before connecting: it sets the window scale
    raw.connect(("127.0.0.1", server.port))
    # No keepalive pings: their pongs would wait behind the backlog and the client would give up itself.
    return await open_client(server, service, sock=raw, max_queue=1, ping_interval=None), raw


async def post_batch(http: httpx.AsyncClient, service: str, value: float) -> None:
    points = [{"service": service, "metric_type": "latency", "value": value, "tags": BIG_TAGS}] * PER_REQUEST
    response = await http.post(
        "/metrics/ingest", content=orjson.dumps(points), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text


async def counter(http: httpx.AsyncClient, name: str) -> float:
    text = (await http.get("/metrics/prometheus")).text
    found = re.search(rf"^telemetry_{name}_total (\S+)$", text, re.MULTILINE)
    assert found, f"telemetry_{name}_total is not exposed"
    return float(found.group(1))


@pytest.mark.live
@pytest.mark.slow
async def test_a_client_that_stops_reading_gets_a_lag_notice_and_the_newest_points_when_it_reads_again(tmp_path):
    service = unique("lag")
    requests = 60  # 60 x 50 points of ~3 KB: more than the kernel's socket buffers and daphne's 64 KiB hold
    # The outbox holds ten requests' points; the stall timeout is far beyond the test, so nobody is cut off.
    with live_server(tmp_path, WS_QUEUE_POINTS=str(PER_REQUEST * 10), WS_STALL_TIMEOUT_SECONDS="600") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            reader = await open_client(server, service)
            stuck, raw = await open_stuck_client(server, service)
            got, reader_lag = 0, 0

            async def read() -> None:
                nonlocal got, reader_lag
                async for message in reader:
                    frame = orjson.loads(message)
                    if frame["type"] == "metrics":
                        got += len(frame["data"])
                    elif frame["type"] == "lag":
                        reader_lag += frame["dropped"]

            task = asyncio.create_task(read())
            try:
                started = time.monotonic()
                for value in range(requests):
                    await post_batch(http, service, float(value))
                    # Paced by the reader: the next batch goes once this one has reached it, so the
                    # reader's outbox can never overflow however loaded the machine is, and any lag
                    # the stuck client sees is its own backpressure.
                    async with asyncio.timeout(60):
                        while got + reader_lag < (value + 1) * PER_REQUEST:
                            if task.done():
                                task.result()  # the reader failed: raise its error here
                                raise AssertionError("the reading client's stream ended")
                            await asyncio.sleep(0.01)
                stuck_for = time.monotonic() - started
                # The stuck client reads again at once (daphne's keepalive drops a client silent for ~50 s):
                # what was in flight, then the notice, then the newest points.
                dropped, values = 0, []
                async with asyncio.timeout(120):
                    while values.count(float(requests - 1)) < PER_REQUEST:
                        frame = await next_frame(stuck, timeout=60)
                        if frame["type"] == "lag":
                            dropped += frame["dropped"]
                        elif frame["type"] == "metrics":
                            values.extend(p["value"] for p in frame["data"])
            finally:
                task.cancel()
            # The reading client kept up: its outbox never overflowed, so the stuck client's lag is backpressure.
            assert reader_lag == 0
            await stuck.close()
            raw.close()
            await reader.close()
    assert dropped > 0, f"no lag notice after {stuck_for:.0f} s stuck"
    assert len(values) + dropped == requests * PER_REQUEST  # every point either arrived or was counted as dropped
    assert values[-PER_REQUEST:] == [float(requests - 1)] * PER_REQUEST  # the newest points are the ones kept


@pytest.mark.live
@pytest.mark.slow
async def test_a_client_stalled_past_the_timeout_is_closed_with_4008_and_cut_off(tmp_path):
    service = unique("stall")
    with live_server(tmp_path, WS_QUEUE_POINTS=str(PER_REQUEST * 4), WS_STALL_TIMEOUT_SECONDS="3") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            stuck, raw = await open_stuck_client(server, service)
            # Feed it until the server has given up on it (the buffer backs up, then the stall timer fires).
            value = 0.0
            async with asyncio.timeout(120):
                while not await counter(http, "websocket_closed_slow"):
                    await post_batch(http, service, value)
                    value += 1
            # Read again at once: the close frame sits behind the backlog, and the server
            # aborts the TCP connection one second after sending it.
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(60):
                    while True:
                        await stuck.recv()
            raw.close()
            async with asyncio.timeout(60):
                while (await http.get("/metrics/health")).json()["streaming"]["connections"]:
                    await asyncio.sleep(0.1)
            assert await counter(http, "websocket_closed_slow") == 1
    # The close code reaches a client that reads within that second; a slower one sees the cut (no frame).
    received = closed.value.rcvd
    assert received is None or received.code == fanout.CLOSE_TOO_SLOW == 4008, received


# --- The sender fails (in process) ----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_failing_sender_closes_its_connection_with_4011_and_others_keep_streaming(monkeypatch, settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)

    async def connected(service: str) -> WebsocketCommunicator:
        comm = WebsocketCommunicator(
            application, "/ws/metrics", headers=[(b"host", b"localhost"), (b"origin", b"http://localhost")]
        )
        ok, _ = await comm.connect(timeout=10)
        assert ok
        assert orjson.loads(await comm.receive_from(timeout=10))["type"] == "initial"
        await comm.send_to(text_data=orjson.dumps({"action": "subscribe", "services": [service]}).decode())
        assert orjson.loads(await comm.receive_from(timeout=10))["type"] == "subscribed"
        return comm

    doomed, healthy = await connected("doomed"), await connected("healthy")
    take = protocol.Outbox.take

    def failing_take(self):  # type: ignore[no-untyped-def]
        if self.subscription.services == {"doomed"} or self.subscription.services == ["doomed"]:
            raise RuntimeError("encoder bug")
        return take(self)

    monkeypatch.setattr(protocol.Outbox, "take", failing_take)
    point = {"timestamp": "2026-11-28T12:00:00Z", "metric_type": "cpu", "value": 1.0, "tags": {}}
    await broadcast.publish([{**point, "service": "doomed"}, {**point, "service": "healthy"}], [])
    assert await doomed.receive_output(timeout=10) == {"type": "websocket.close", "code": fanout.CLOSE_SERVER_ERROR}
    assert fanout.CLOSE_SERVER_ERROR == 4011
    assert orjson.loads(await healthy.receive_from(timeout=10))["data"]["service"] == "healthy"
    assert stats.snapshot()["ws_sender_errors"] == 1
    await doomed.disconnect()
    await healthy.disconnect()
    assert fanout.hub().connections == set()


# --- Redis goes away and comes back (SQLite + Redis layer) --------------------------------------


@pytest.fixture
def redis_stack(tmp_path):
    require_service("Redis", shutil.which("redis-server") is not None, "redis-server is not installed")
    redis = OwnRedis().start()
    try:
        with live_server(tmp_path, REDIS_URL=redis.url, CHANNEL_LAYER_PREFIX=f"fanout{uuid.uuid4().hex[:8]}") as server:
            yield server, redis
    finally:
        redis.stop()


@pytest.mark.live
@pytest.mark.slow
async def test_the_hub_resubscribes_after_redis_comes_back_without_a_server_restart(redis_stack):
    server, redis = redis_stack
    service = unique("redis")

    async def post(value: float) -> None:
        point = {"service": service, "metric_type": "latency", "value": value}
        assert (await http.post("/metrics/ingest", json=point)).status_code == 200

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        ws = await open_client(server, service)
        await post(1.0)
        assert 1.0 in await metric_values(ws, 20)

        redis.stop()
        await post(2.0)  # stored and answered while the layer is down
        async with asyncio.timeout(60):
            while not (await http.get("/metrics/health")).json()["checks"]["channel_layer"].startswith("degraded"):
                await asyncio.sleep(0.2)

        redis.start()  # same port, empty: the hub must join the group again by itself
        received: list[float] = []
        value = 100.0
        async with asyncio.timeout(60):
            while not received:
                value += 1
                await post(value)
                try:
                    received = [v for v in await metric_values(ws, 2) if v > 100]
                except websockets.ConnectionClosed:
                    ws = await open_client(server, service)  # a client reconnects, as the dashboard does
        health = (await http.get("/metrics/health")).json()
        await ws.close()
    assert received
    assert health["streaming"]["group_members"] == 1  # one subscription for the process, not one per reconnect
