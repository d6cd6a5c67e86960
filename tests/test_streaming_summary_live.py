"""Summary subscriptions against a real daphne and real `websockets` clients.

Every test runs with the in-memory channel layer and with the Redis pub/sub
layer (skipped when Redis is not reachable): each process aggregates what its
hub receives, whichever layer delivered it. Each test uses service names of
its own; the plain-code side (windows, sharing, slow clients) is
tests/test_streaming_summary.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest

from metrics.series import sketch
from tests.live import LiveServer
from tests.pgtools import REDIS_URL, reachable
from tests.services import require_service
from tests.support.servers import own_server
from tests.support.ws import WAIT_SECONDS, connect, frames_until, next_frame, next_of_type, subscribe

pytestmark = [pytest.mark.live, pytest.mark.slow]


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request, tmp_path_factory) -> Iterator[LiveServer]:
    env = {"DATABASE_URL": "", "REQUIRE_API_KEY": "0", "TELEMETRY_SCHEDULER": "0"}
    if request.param == "redis":
        require_service("Redis", reachable(REDIS_URL, 6379), f"nothing answers at {REDIS_URL}")
        env.update(REDIS_URL=REDIS_URL, CHANNEL_LAYER_PREFIX=f"summarytest{uuid.uuid4().hex[:8]}")
    else:
        env["REDIS_URL"] = ""
    with own_server(tmp_path_factory.mktemp(f"summary-{request.param}"), **env) as live:
        yield live


def unique(prefix: str = "svc") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def post(client: httpx.AsyncClient, server: LiveServer, points: list[dict]) -> None:
    response = await client.post(
        server.url + "/metrics/ingest", content=orjson.dumps(points), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text


async def summary_with_series(ws) -> dict:
    """Skip summary frames until one holds a series (the tick in which the points were published)."""
    frames = await frames_until(ws, lambda got: bool(got) and got[-1]["type"] == "summary" and got[-1]["series"])
    return frames[-1]


async def test_the_tick_holds_exact_stats_of_the_points_posted_in_it(server):
    service = unique()
    async with connect(server) as ws, httpx.AsyncClient(timeout=20) as client:
        assert (await next_frame(ws))["type"] == "initial"
        reply = await subscribe(ws, services=[service], mode="summary", interval=1)
        assert (reply["mode"], reply["interval"]) == ("summary", 1)
        # One request is one published message: all 100 points land in one tick.
        await post(client, server, [{"service": service, "metric_type": "latency", "value": v} for v in range(1, 101)])
        frame = await summary_with_series(ws)
    [row] = frame["series"]
    assert {k: row[k] for k in ("service", "metric_type", "count", "min", "max", "mean", "last")} == {
        "service": service,
        "metric_type": "latency",
        "count": 100,
        "min": 1.0,
        "max": 100.0,
        "mean": 50.5,
        "last": 100.0,
    }
    assert row["p95"] == pytest.approx(np.quantile(np.arange(1, 101), 0.95), rel=sketch.RELATIVE_ACCURACY)
    assert frame["interval"] == 1 and frame["start"].endswith("Z") and frame["end"].endswith("Z")
    assert frame["start"] < frame["end"]


async def test_a_filter_only_gets_its_series(server):
    mine, other = unique("mine"), unique("other")
    async with connect(server) as ws, httpx.AsyncClient(timeout=20) as client:
        await next_frame(ws)
        await subscribe(ws, services=[mine], metric_types=["cpu"], mode="summary", interval=1)
        await post(
            client,
            server,
            [
                {"service": other, "metric_type": "cpu", "value": 1},
                {"service": mine, "metric_type": "memory", "value": 2},
                {"service": mine, "metric_type": "cpu", "value": 3},
            ],
        )
        frame = await summary_with_series(ws)
    assert [(s["service"], s["metric_type"], s["count"], s["last"]) for s in frame["series"]] == [(mine, "cpu", 1, 3.0)]


async def test_every_tick_sends_a_frame_even_when_nothing_matched(server):
    async with connect(server) as ws:
        await next_frame(ws)
        await subscribe(ws, services=[unique("silent")], mode="summary", interval=1)
        frames = await frames_until(ws, lambda got: len(got) >= 3)
    assert [f["type"] for f in frames] == ["summary"] * 3
    assert [f["series"] for f in frames] == [[], [], []]
    # Consecutive windows: each starts where the previous one ended.
    assert frames[1]["start"] == frames[0]["end"] and frames[2]["start"] == frames[1]["end"]


async def test_an_interval_outside_the_allowed_set_is_an_error_frame_naming_the_field(server):
    async with connect(server) as ws:
        await next_frame(ws)
        await ws.send(orjson.dumps({"action": "subscribe", "mode": "summary", "interval": 3}).decode())
        reply = await next_of_type(ws, "error")
        assert "'interval'" in reply["error"]
        # The connection stays open and usable.
        assert (await subscribe(ws, mode="summary", interval=5))["interval"] == 5


async def test_two_subscribers_with_the_same_filter_share_one_encoded_frame(server):
    service = unique("shared")
    async with connect(server) as a, connect(server) as b, httpx.AsyncClient(timeout=20) as client:
        for ws in (a, b):
            await next_frame(ws)
            await subscribe(ws, services=[service], mode="summary", interval=1)
        await next_of_type(a, "summary")
        await next_of_type(b, "summary")
        # Both are registered once the tick that fed both is the last one (other tests' clients gone).
        async with asyncio.timeout(WAIT_SECONDS):
            while True:
                tick = (await client.get(server.url + "/metrics/health")).json()["streaming"]["summary"]["last_tick"]
                if tick["subscribers"] == 2:
                    break
                await next_of_type(a, "summary")  # the next tick, not a sleep
    assert {k: tick[k] for k in ("interval", "subscribers", "frames_encoded")} == {
        "interval": 1,
        "subscribers": 2,
        "frames_encoded": 1,
    }
