"""MetricsConsumer in process (WebsocketCommunicator) and the publishing side (metrics.live.publish).

Each test gets its own event loop, and so its own fan-out hub; the in-memory
channel layer is the default here.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from channels.layers import InMemoryChannelLayer
from channels.testing import WebsocketCommunicator
from django.db import connections

from metrics import stats
from metrics.live import fanout
from metrics.live import publish as broadcast
from metrics.models import Point
from telemetry_project.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def short_lived_thread_connections(monkeypatch):
    """The consumer reads its snapshot on a worker thread; with persistent connections
    (CONN_MAX_AGE, PostgreSQL) that thread would keep the test database open past teardown."""
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)


@pytest.fixture(autouse=True)
def in_memory_layer(settings):
    """The consumer in process, on the in-memory layer even in the Redis run (the live tests cover Redis)."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def communicator() -> WebsocketCommunicator:
    return WebsocketCommunicator(
        application, "/ws/metrics", headers=[(b"host", b"localhost"), (b"origin", b"http://localhost")]
    )


def point(service="api", metric_type="latency", value=1.0):
    return {
        "timestamp": "2026-11-28T12:00:00Z",
        "service": service,
        "metric_type": metric_type,
        "value": value,
        "tags": {},
    }


async def connected() -> WebsocketCommunicator:
    comm = communicator()
    ok, _ = await comm.connect(timeout=10)
    assert ok
    initial = orjson.loads(await comm.receive_from(timeout=10))
    assert initial["type"] == "initial"
    return comm


async def frame(comm: WebsocketCommunicator) -> dict:
    return orjson.loads(await comm.receive_from(timeout=30))


async def ask(comm: WebsocketCommunicator, message: dict) -> dict:
    await comm.send_to(text_data=orjson.dumps(message).decode())
    return await frame(comm)


async def test_initial_frame_holds_the_latest_50_points_oldest_first():
    start = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    await Point.objects.abulk_create(
        Point(timestamp=start + timedelta(seconds=i), service="api", metric_type="cpu", value=i, tags={})
        for i in range(60)
    )
    comm = communicator()
    assert (await comm.connect(timeout=10))[0]
    initial = await frame(comm)
    assert initial["type"] == "initial"
    assert [p["value"] for p in initial["data"]] == [float(i) for i in range(10, 60)]
    assert initial["data"][0]["timestamp"] == "2026-11-28T12:00:10Z"
    await comm.disconnect()


async def test_a_published_point_and_alert_arrive_as_metric_then_alert_frames():
    comm = await connected()
    alert = {"id": 3, "service": "api", "metric_type": "latency", "state": "firing", "severity": "critical"}
    assert await broadcast.publish([point(value=2000)], [alert])
    assert await frame(comm) == {"type": "metric", "data": point(value=2000)}
    assert await frame(comm) == {"type": "alert", "data": alert}
    await comm.disconnect()


async def test_subscription_filters_services_and_types():
    comm = await connected()
    reply = await ask(comm, {"action": "subscribe", "services": ["db"], "metric_types": ["cpu"]})
    assert reply["type"] == "subscribed"
    await broadcast.publish([point("api", "cpu"), point("db", "latency"), point("db", "cpu", 7)], [])
    await broadcast.publish([point("api", "cpu", 8), point("db", "cpu", 9)], [])
    # Frames keep their order, so the second matching point coming next proves
    # nothing filtered out slipped through in between (no quiet-period guess).
    assert await frame(comm) == {"type": "metric", "data": point("db", "cpu", 7)}
    assert await frame(comm) == {"type": "metric", "data": point("db", "cpu", 9)}
    await comm.disconnect()


# A flush window far longer than three in-process publishes can take, even on a
# loaded machine: the tests below wait for one window, they do not race it.
WINDOW_MS = 2000


async def test_batch_mode_gathers_updates_published_within_the_interval(telemetry):
    telemetry(WS_FLUSH_INTERVAL_MS=WINDOW_MS)
    comm = await connected()
    await ask(comm, {"action": "subscribe", "batch": True})
    await broadcast.publish([point(value=1)], [])  # idle connection: flushed at once
    assert await frame(comm) == {"type": "metrics", "data": [point(value=1)]}
    for v in (2, 3, 4):
        await broadcast.publish([point(value=v)], [])
    assert await frame(comm) == {"type": "metrics", "data": [point(value=2), point(value=3), point(value=4)]}
    await comm.disconnect()


async def test_unsubscribe_returns_to_every_point_one_frame_each():
    comm = await connected()
    await ask(comm, {"action": "subscribe", "services": ["db"], "batch": True})
    assert await ask(comm, {"action": "unsubscribe"}) == {"type": "unsubscribed"}
    await broadcast.publish([point("api", value=1), point("web", value=2)], [])
    assert [(await frame(comm))["type"] for _ in range(2)] == ["metric", "metric"]
    await comm.disconnect()


async def test_ping_gets_pong_and_errors_keep_the_connection_open():
    comm = await connected()
    assert (await ask(comm, {"action": "ping"}))["type"] == "pong"
    await comm.send_to(text_data="{not json")
    assert (await frame(comm))["type"] == "error"
    assert (await ask(comm, {"action": "subscribe", "metric_types": ["nope"]}))["type"] == "error"
    assert (await ask(comm, {"action": "ping"}))["type"] == "pong"
    await comm.disconnect()


async def test_a_slow_reader_gets_a_lag_notice_and_only_the_newest_points(telemetry):
    telemetry(WS_QUEUE_POINTS=3, WS_FLUSH_INTERVAL_MS=WINDOW_MS)
    comm = await connected()
    await ask(comm, {"action": "subscribe", "batch": True})
    await broadcast.publish([point(value=0)], [])
    assert (await frame(comm))["data"] == [point(value=0)]
    for v in range(1, 7):  # arrive inside the window; only 3 fit
        await broadcast.publish([point(value=v)], [])
    assert await frame(comm) == {"type": "lag", "dropped": 3}
    assert [p["value"] for p in (await frame(comm))["data"]] == [4, 5, 6]
    await comm.disconnect()


async def test_an_oversized_message_closes_the_connection(telemetry):
    telemetry(WS_MAX_MESSAGE_BYTES=1024)
    comm = await connected()
    await comm.send_to(text_data="x" * 2048)
    closed = await comm.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": fanout.CLOSE_TOO_BIG}
    await comm.disconnect()


async def test_a_message_flood_closes_the_connection(telemetry):
    telemetry(WS_MAX_MESSAGES_PER_SECOND=5)
    comm = await connected()
    for _ in range(30):
        await comm.send_to(text_data='{"action": "ping"}')
    outputs = []
    while True:
        out = await comm.receive_output(timeout=5)
        outputs.append(out)
        if out["type"] == "websocket.close":
            break
    assert outputs[-1]["code"] == fanout.CLOSE_RATE_LIMIT
    assert len(outputs) - 1 <= 10  # the burst allowance, then the close
    await comm.disconnect()


async def test_disconnecting_leaves_no_connection_and_no_group_member():
    hub = fanout.hub()
    before = hub.group_members() or 0  # the layer object outlives each test's event loop
    comms = [await connected() for _ in range(3)]
    assert len(hub.connections) == 3
    assert hub.group_members() == before + 1  # one subscription for the whole process
    for comm in comms:
        await comm.disconnect()
    assert hub.connections == set()
    assert hub.group_members() == before
    assert stats.snapshot()["ws_connections"] == 0


async def test_a_group_send_from_elsewhere_reaches_connections_through_the_hub():
    comm = await connected()
    layer = fanout.hub().layer
    assert isinstance(layer, InMemoryChannelLayer)
    await layer.group_send(fanout.GROUP, broadcast.message([point(value=5)], []))
    assert (await frame(comm))["data"] == point(value=5)
    await comm.disconnect()


# --- publishing never fails ingestion ------------------------------------------------------


class BrokenLayer:
    async def group_send(self, group, message):
        raise ConnectionError("redis is down")


async def test_a_failing_layer_is_counted_and_reported_not_raised(monkeypatch):
    monkeypatch.setattr(broadcast, "get_channel_layer", lambda: BrokenLayer())
    monkeypatch.setattr(fanout, "local_delivery", lambda: False)
    broadcast.publish_soon([point()], [])  # returns at once
    async with asyncio.timeout(30):
        while not stats.snapshot().get("broadcast_failures"):
            await asyncio.sleep(0.01)
    assert stats.snapshot()["broadcast_failures"] == 1
    assert broadcast.degraded()
    assert (await broadcast.probe()).startswith("degraded")


class RecordingLayer:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def group_send(self, group, message):
        self.sent.append(message)


async def published_through(layer: RecordingLayer, points: int) -> list[list[float]]:
    async with asyncio.timeout(30):
        while sum(len(m["points"]) for m in layer.sent) < points:
            await asyncio.sleep(0.01)
    return [[p["value"] for p in m["points"]] for m in layer.sent]


async def test_requests_announced_together_leave_for_the_layer_as_one_message_in_order(monkeypatch):
    """A writer group's requests are announced in one loop iteration; through Redis each was its own message and
    so its own frame to every client (figure 5 on PostgreSQL + Redis: ~1.8x the frames per point of in-memory)."""
    layer = RecordingLayer()
    monkeypatch.setattr(broadcast, "get_channel_layer", lambda: layer)
    monkeypatch.setattr(fanout, "local_delivery", lambda: False)
    for value in (1.0, 2.0, 3.0):
        broadcast.publish_soon([point(value=value)], [{"id": int(value)}] if value == 2.0 else [])
    assert await published_through(layer, 3) == [[1.0, 2.0, 3.0]]
    assert layer.sent[0]["alerts"] == [{"id": 2}]


async def test_a_merged_message_stops_at_max_merged_points_and_the_rest_follows(monkeypatch):
    layer = RecordingLayer()
    monkeypatch.setattr(broadcast, "get_channel_layer", lambda: layer)
    monkeypatch.setattr(fanout, "local_delivery", lambda: False)
    monkeypatch.setattr(broadcast, "MAX_MERGED_POINTS", 2)
    for value in (1.0, 2.0, 3.0):
        broadcast.publish_soon([point(value=value)], [])
    assert await published_through(layer, 3) == [[1.0, 2.0], [3.0]]


def test_ingest_answers_200_and_health_is_degraded_when_the_layer_fails(client, monkeypatch):
    monkeypatch.setattr(broadcast, "get_channel_layer", lambda: BrokenLayer())
    monkeypatch.setattr(fanout, "local_delivery", lambda: False)
    body = {"service": "api", "metric_type": "latency", "value": 1.0}  # timestamp: now
    response = client.post("/metrics/ingest", body, content_type="application/json")
    assert response.status_code == 200, response.content
    assert Point.objects.count() == 1
    health = client.get("/metrics/health").json()
    assert health["checks"]["channel_layer"].startswith("degraded")
    assert health["status"] == "degraded"


def test_publish_soon_from_a_thread_without_a_loop_and_no_server_is_a_no_op():
    broadcast.publish_soon([point()], [])  # in-memory layer, no serving loop: nobody to tell
    assert stats.snapshot().get("broadcast_failures", 0) == 0
