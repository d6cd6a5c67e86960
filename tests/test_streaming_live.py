"""/ws/metrics against a real daphne server and real `websockets` clients.

Every test runs twice: with the in-memory channel layer and with the Redis
pub/sub layer (skipped when Redis is not reachable). Each layer gets one
server for the module, on its own SQLite file and, for Redis, its own
channel-layer prefix, so other servers sharing the Redis never cross-talk.
Each test posts to service names of its own and subscribes to them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import websockets
from websockets.typing import Origin

from tests.live import LiveServer
from tests.pgtools import REDIS_URL, reachable
from tests.services import require_service
from tests.support.servers import own_server
from tests.support.ws import connect, frames_until, next_frame, subscribe

pytestmark = [pytest.mark.live, pytest.mark.slow]

# Long enough that a reader starved of CPU on a busy machine is not mistaken for a stuck one.
STALL_SECONDS = 10


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request, tmp_path_factory) -> Iterator[LiveServer]:
    env = {
        "DATABASE_URL": "",
        "REQUIRE_API_KEY": "0",
        "MAX_SERIES_PER_SERVICE": "100000",
        "WS_STALL_TIMEOUT_SECONDS": str(STALL_SECONDS),
        # Room for the whole 100-client stream (5,000 points), so a lag notice there is a bug,
        # not a slow test process; what a stuck client may hold is bench figure 12's concern.
        "WS_QUEUE_POINTS": "10000",
        "TELEMETRY_SCHEDULER": "0",
    }
    if request.param == "redis":
        require_service("Redis", reachable(REDIS_URL, 6379), f"nothing answers at {REDIS_URL}")
        env.update(REDIS_URL=REDIS_URL, CHANNEL_LAYER_PREFIX=f"streamtest{uuid.uuid4().hex[:8]}")
    else:
        env["REDIS_URL"] = ""
    tmp: Path = tmp_path_factory.mktemp(f"ws-{request.param}")
    with own_server(tmp, **env) as live:
        live.layer = request.param  # type: ignore[attr-defined]  # which layer this parametrised server runs
        yield live


def unique(prefix: str = "svc") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def post(client: httpx.AsyncClient, server: LiveServer, points) -> dict:
    response = await client.post(
        server.url + "/metrics/ingest", content=orjson.dumps(points), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    return response.json()


def health(server: LiveServer) -> dict:
    return httpx.get(server.url + "/metrics/health", timeout=10).json()


async def test_a_posted_point_arrives_as_a_metric_frame(server):
    service = unique()
    async with connect(server) as ws, httpx.AsyncClient(timeout=20) as client:
        assert (await next_frame(ws))["type"] == "initial"
        await subscribe(ws, services=[service])
        await post(client, server, {"service": service, "metric_type": "cpu", "value": 42.5, "tags": {"host": "a"}})
        frame = await next_frame(ws)
    assert frame["type"] == "metric"
    assert {k: frame["data"][k] for k in ("service", "metric_type", "value", "tags")} == {
        "service": service,
        "metric_type": "cpu",
        "value": 42.5,
        "tags": {"host": "a"},
    }
    assert frame["data"]["timestamp"].endswith("Z")


async def test_an_alert_opening_point_arrives_as_metric_and_alert_frames(server):
    service = unique()
    async with connect(server) as ws, httpx.AsyncClient(timeout=20) as client:
        await next_frame(ws)
        await subscribe(ws, services=[service])
        answer = await post(client, server, {"service": service, "metric_type": "latency", "value": 5000})
        frames = [await next_frame(ws), await next_frame(ws)]
    assert [f["type"] for f in frames] == ["metric", "alert"]
    assert frames[1]["data"]["id"] == answer["alert"]["id"]
    assert frames[1]["data"]["state"] == "firing" and frames[1]["data"]["severity"] == "critical"


async def test_the_initial_frame_holds_recent_points_oldest_first(server):
    service = unique()
    async with httpx.AsyncClient(timeout=20) as client:
        await post(client, server, [{"service": service, "metric_type": "cpu", "value": float(i)} for i in range(3)])
    async with connect(server) as ws:
        initial = await next_frame(ws)
    assert initial["type"] == "initial"
    assert 3 <= len(initial["data"]) <= 50
    stamps = [p["timestamp"] for p in initial["data"]]
    assert stamps == sorted(stamps)
    assert [p["value"] for p in initial["data"] if p["service"] == service] == [0.0, 1.0, 2.0]


async def test_subscription_filters_and_batch_mode(server):
    a, b = unique("a"), unique("b")
    async with connect(server) as only_a, connect(server) as batched, httpx.AsyncClient(timeout=20) as client:
        await next_frame(only_a)
        await next_frame(batched)
        await subscribe(only_a, services=[a], metric_types=["cpu"])
        reply = await subscribe(batched, services=[a, b], batch=True)
        assert reply["batch"] is True
        points = [
            {"service": a, "metric_type": "cpu", "value": 1},
            {"service": a, "metric_type": "memory", "value": 2},
            {"service": b, "metric_type": "cpu", "value": 3},
        ]
        for _ in range(3):
            await post(client, server, points)
        single = await frames_until(only_a, lambda got: len(got) == 3)
        batch = await frames_until(batched, lambda got: sum(len(f.get("data", ())) for f in got) >= 9)
    assert {f["type"] for f in single} == {"metric"}
    assert all(f["data"]["service"] == a and f["data"]["metric_type"] == "cpu" for f in single)
    assert {f["type"] for f in batch} == {"metrics"}
    assert len(batch) <= 3  # gathered: never more frames than requests
    values = [p["value"] for f in batch for p in f["data"]]
    assert values == [1, 2, 3] * 3


async def test_a_hundred_clients_each_receive_every_point_of_a_500_per_second_stream_in_one_order(server):
    """Behaviour, not speed (that is `make bench` figure 4b): every client gets every point, no lag
    notice (the queue holds the whole stream), all in one order with each request's points in a
    row, while the stream really is offered at 500 points/s."""
    service = unique("load")
    clients, seconds, requests_per_second, per_request = 100, 10, 50, 10
    total = seconds * requests_per_second * per_request
    received: list[list[float]] = [[] for _ in range(clients)]
    lags = [0] * clients
    sockets = []
    # No pool limit: a slow answer must not hold back the next request's start.
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None)) as client:
        for _ in range(clients):
            ws = await connect(server).__aenter__()
            sockets.append(ws)
            await next_frame(ws, timeout=60)
            await subscribe(ws, services=[service], batch=True)

        async def read(i: int, ws) -> None:
            async for raw in ws:
                frame = orjson.loads(raw)
                if frame["type"] == "metrics":
                    received[i].extend(p["value"] for p in frame["data"])
                    if len(received[i]) >= total:
                        return
                elif frame["type"] == "lag":
                    lags[i] += frame["dropped"]

        readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(sockets)]
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            launched: list[float] = []
            posts = []
            for n in range(seconds * requests_per_second):
                # Open loop: each request starts on its own schedule, whatever the server's
                # answer time, so the offered rate is the promised one.
                pause = start + n / requests_per_second - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                batch = [
                    {"service": service, "metric_type": "throughput", "value": float(n * per_request + j)}
                    for j in range(per_request)
                ]
                launched.append(loop.time())
                posts.append(asyncio.create_task(post(client, server, batch)))
            await asyncio.gather(*posts)
            async with asyncio.timeout(120):
                await asyncio.gather(*readers)
        finally:
            for task in readers:
                task.cancel()
            for ws in sockets:
                await ws.close()
    offered = total / (launched[-1] - launched[0] + 1 / requests_per_second)
    # Generous for a loaded machine: only an event loop starved for seconds offers less.
    assert offered >= 0.75 * requests_per_second * per_request, f"offered {offered:.0f} points/s"
    assert lags == [0] * clients
    assert all(len(values) == total for values in received), [len(v) for v in received]
    # Concurrent requests may be broadcast in any order, but in one order for everybody,
    # and each request's points in a row and in order.
    assert all(values == received[0] for values in received)
    assert sorted(received[0]) == [float(v) for v in range(total)]
    firsts = received[0][::per_request]
    assert all(
        received[0][i : i + per_request] == [f + j for j in range(per_request)]
        for i, f in zip(range(0, total, per_request), firsts, strict=True)
    )


async def test_a_client_that_never_reads_is_cut_off_without_delaying_others(server):
    """A reader and a client that never reads: the reader misses nothing, the stuck client is cut off.

    The memory bound this once also measured is `make bench` figure 12.
    """
    import socket

    service = unique("stall")
    point = {"service": service, "metric_type": "cpu", "value": 1.0, "tags": {f"k{i}": "x" * 250 for i in range(12)}}
    requests = 120
    async with connect(server) as reader, httpx.AsyncClient(timeout=60) as client:
        await next_frame(reader)
        await subscribe(reader, services=[service], batch=True)
        got, lag = 0, 0

        async def read() -> None:
            nonlocal got, lag
            async for message in reader:
                frame = orjson.loads(message)
                if frame["type"] == "metrics":
                    got += len(frame["data"])
                elif frame["type"] == "lag":
                    lag += frame["dropped"]

        task = asyncio.create_task(read())
        # A small receive buffer and a one-message queue: this client stops
        # reading at the TCP level almost at once. It takes every point.
        raw = socket.create_connection(("127.0.0.1", server.port))
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck = await websockets.connect(server.ws_url, origin=Origin(server.url), sock=raw, max_queue=1, max_size=None)
        assert health(server)["streaming"]["connections"] == 2
        for _ in range(requests):
            await post(client, server, [point] * 50)
        total = requests * 50
        try:
            async with asyncio.timeout(120):
                while got < total:
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"reader got {got} of {total} points, lag {lag}; {health(server)}") from None
        finally:
            task.cancel()
        # The server drops the stuck client (which, not reading, cannot tell): only the reader is left.
        async with asyncio.timeout(120):
            while health(server)["streaming"]["connections"] != 1:
                await asyncio.sleep(0.2)
        stuck.transport.abort()
        raw.close()
    assert got == total and lag == 0  # the reading client missed nothing


async def test_an_oversized_frame_is_refused_with_close_code_1009(server):
    async with connect(server) as ws:
        await next_frame(ws)
        await ws.send("x" * (1024 * 1024))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 15)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_closing_connections_leaves_no_group_membership(server):
    sockets = [await connect(server).__aenter__() for _ in range(5)]
    for ws in sockets:
        await next_frame(ws)
    during = health(server)["streaming"]
    assert during["connections"] >= 5
    assert during["group_members"] == 1
    for ws in sockets:
        await ws.close()
    async with asyncio.timeout(15):
        while (state := health(server)["streaming"])["connections"]:
            await asyncio.sleep(0.1)
    assert state["group_members"] == 0
    if server.layer == "redis":
        import redis

        prefix = server.env["CHANNEL_LAYER_PREFIX"]
        with redis.Redis.from_url(REDIS_URL) as r:
            assert r.pubsub_numsub(f"{prefix}__group__metrics") == [(f"{prefix}__group__metrics".encode(), 0)]
