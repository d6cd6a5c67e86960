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

pytestmark = [pytest.mark.live, pytest.mark.slow]

ORIGIN = "http://127.0.0.1"
STALL_SECONDS = 3


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request, tmp_path_factory) -> Iterator[LiveServer]:
    env = {
        "DATABASE_URL": "",
        "REQUIRE_API_KEY": "0",
        "MAX_SERIES_PER_SERVICE": "100000",
        "WS_STALL_TIMEOUT_SECONDS": str(STALL_SECONDS),
        "WS_QUEUE_POINTS": "1000",  # what a stalled client may hold: 1,000 x ~3 KB points
        "TELEMETRY_SCHEDULER": "0",
    }
    if request.param == "redis":
        require_service("Redis", reachable(REDIS_URL, 6379), f"nothing answers at {REDIS_URL}")
        env.update(REDIS_URL=REDIS_URL, CHANNEL_LAYER_PREFIX=f"streamtest{uuid.uuid4().hex[:8]}")
    else:
        env["REDIS_URL"] = ""
    tmp: Path = tmp_path_factory.mktemp(f"ws-{request.param}")
    with LiveServer(tmp, env=env) as live:
        live.layer = request.param  # type: ignore[attr-defined]  # which layer this parametrised server runs
        yield live


def unique(prefix: str = "svc") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def connect(server: LiveServer, **kwargs):
    return websockets.connect(server.ws_url, origin=Origin(ORIGIN), max_size=None, open_timeout=20, **kwargs)


async def next_frame(ws, timeout: float = 15.0) -> dict:
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


async def frames_until(ws, wanted, timeout: float = 15.0) -> list[dict]:
    """Read frames until `wanted(frames)` is true; fail after `timeout` seconds."""
    got: list[dict] = []
    async with asyncio.timeout(timeout):
        while not wanted(got):
            got.append(orjson.loads(await ws.recv()))
    return got


async def subscribe(ws, **fields) -> dict:
    await ws.send(orjson.dumps({"action": "subscribe", **fields}).decode())
    while True:
        frame = await next_frame(ws)
        if frame["type"] == "subscribed":
            return frame


async def post(client: httpx.AsyncClient, server: LiveServer, points) -> dict:
    response = await client.post(
        server.url + "/metrics/ingest", content=orjson.dumps(points), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    return response.json()


def health(server: LiveServer) -> dict:
    return httpx.get(server.url + "/metrics/health", timeout=10).json()


def rss_anon_kib(pid: int) -> int:
    """Anonymous resident memory: heap and buffers, not the mmapped SQLite file."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc status")


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


async def test_a_hundred_clients_each_receive_every_point_of_a_500_per_second_stream(server):
    service = unique("load")
    clients, seconds, requests_per_second, per_request = 100, 10, 50, 10
    total = seconds * requests_per_second * per_request
    received = [0] * clients
    lags = [0] * clients
    sockets = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(clients):
            ws = await connect(server).__aenter__()
            sockets.append(ws)
            await next_frame(ws, timeout=30)
            await subscribe(ws, services=[service], batch=True)

        async def read(i: int, ws) -> None:
            async for raw in ws:
                frame = orjson.loads(raw)
                if frame["type"] == "metrics":
                    received[i] += len(frame["data"])
                    if received[i] >= total:
                        return
                elif frame["type"] == "lag":
                    lags[i] += frame["dropped"]

        readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(sockets)]
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for n in range(seconds * requests_per_second):
                batch = [
                    {"service": service, "metric_type": "throughput", "value": float(n * per_request + j)}
                    for j in range(per_request)
                ]
                await post(client, server, batch)
                pause = start + (n + 1) / requests_per_second - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
            await asyncio.wait_for(asyncio.gather(*readers), 60)
        finally:
            for task in readers:
                task.cancel()
            for ws in sockets:
                await ws.close()
    assert lags == [0] * clients
    assert received == [total] * clients


async def test_a_client_that_never_reads_is_cut_off_without_growing_memory_or_delaying_others(server):
    """Two phases with the same load (~19 MB of frames each): a reader alone, then a reader and a stuck client.

    The server's anonymous RSS also grows with the data it stores (SQLite's
    page cache is heap), so memory is compared phase against phase: had the
    stuck client's frames been buffered, phase B would grow by ~19 MB more.
    """
    import socket

    service = unique("stall")
    point = {"service": service, "metric_type": "cpu", "value": 1.0, "tags": {f"k{i}": "x" * 250 for i in range(12)}}
    requests_per_phase = 120
    async with connect(server) as reader, httpx.AsyncClient(timeout=30) as client:
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

        async def phase() -> float:
            """Post the phase's requests; the server's peak anonymous RSS growth in MiB."""
            baseline = peak = rss_anon_kib(server.proc.pid)
            for _ in range(requests_per_phase):
                await post(client, server, [point] * 50)
                peak = max(peak, rss_anon_kib(server.proc.pid))
                await asyncio.sleep(0.02)
            return (peak - baseline) / 1024

        task = asyncio.create_task(read())
        alone = await phase()
        # A small receive buffer and a one-message queue: this client stops
        # reading at the TCP level almost at once. It takes every point.
        raw = socket.create_connection(("127.0.0.1", server.port))
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck = await websockets.connect(server.ws_url, origin=Origin(ORIGIN), sock=raw, max_queue=1, max_size=None)
        assert health(server)["streaming"]["connections"] == 2
        with_stuck = await phase()
        total = 2 * requests_per_phase * 50
        try:
            async with asyncio.timeout(20):
                while got < total:
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"reader got {got} of {total} points, lag {lag}; {health(server)}") from None
        finally:
            task.cancel()
        # The server drops the stuck client (which, not reading, cannot tell): only the reader is left.
        async with asyncio.timeout(20):
            while health(server)["streaming"]["connections"] != 1:
                await asyncio.sleep(0.2)
        stuck.transport.abort()
        raw.close()
    assert got == total and lag == 0  # the reading client missed nothing
    assert with_stuck < alone + 12, f"RSS growth {with_stuck:.1f} MiB with the stuck client, {alone:.1f} MiB without"


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
