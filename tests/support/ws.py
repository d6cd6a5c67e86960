"""Talking to /ws/metrics on a live server with a real `websockets` client.

    async with connect(server) as ws:
        assert (await next_frame(ws))["type"] == "initial"
        await subscribe(ws, services=["api"], batch=True)
        frames = await frames_until(ws, lambda got: len(got) >= 3)

Every wait is bounded (20 s unless the test says otherwise) and a wait that
runs out fails the test with what did arrive: a slow machine is given time, a
missing frame is reported, never waited for forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import websockets
from websockets.typing import Origin

from tests.live import LiveServer

WAIT_SECONDS = 20.0


def connect(server: LiveServer | str, **kwargs: Any) -> websockets.connect:
    """Open /ws/metrics as the server's own page would: Origin is the server's URL.

    `server` is a LiveServer or the base URL of something that proxies one
    ("http://127.0.0.1:8080"). Frames of any size are accepted unless `max_size`
    says otherwise. Use as `async with connect(server) as ws` or `ws = await connect(server)`.
    """
    url = server.url if isinstance(server, LiveServer) else server
    options: dict[str, Any] = {"max_size": None, "open_timeout": WAIT_SECONDS, **kwargs}
    return websockets.connect("ws" + url.removeprefix("http") + "/ws/metrics", origin=Origin(url), **options)


async def next_frame(ws: Any, timeout: float = WAIT_SECONDS) -> dict:
    """The next frame, decoded; fails after `timeout` seconds without one."""
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


async def frames_until(ws: Any, wanted: Callable[[list[dict]], bool], timeout: float = WAIT_SECONDS) -> list[dict]:
    """Read frames until `wanted(frames)` is true and return them; fail with what came after `timeout` seconds."""
    got: list[dict] = []
    try:
        async with asyncio.timeout(timeout):
            while not wanted(got):
                got.append(orjson.loads(await ws.recv()))
    except TimeoutError:
        raise AssertionError(f"the frames wanted did not arrive within {timeout} s; got {got}") from None
    return got


async def next_of_type(ws: Any, kind: str, timeout: float = WAIT_SECONDS) -> dict:
    """Skip frames until one of type `kind` arrives and return it."""
    frames = await frames_until(ws, lambda got: bool(got) and got[-1]["type"] == kind, timeout)
    return frames[-1]


async def subscribe(ws: Any, timeout: float = WAIT_SECONDS, **fields: Any) -> dict:
    """Send a subscribe action (`services=[...]`, `metric_types=[...]`, `batch=True`) and return the `subscribed` reply."""
    await ws.send(orjson.dumps({"action": "subscribe", **fields}).decode())
    return await next_of_type(ws, "subscribed", timeout)


async def metric_values(ws: Any, timeout: float) -> list[float]:
    """Values of the point frames (`metric` one by one, `metrics` batched) arriving within `timeout`.

    Stops at the first quiet second after a value: for streams that recover,
    where the test asks "do points flow again", not "how many".
    """
    values: list[float] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 1.0))
        except TimeoutError:
            if values:
                break
            continue
        if frame["type"] == "metric":
            values.append(frame["data"]["value"])
        elif frame["type"] == "metrics":
            values.extend(p["value"] for p in frame["data"])
    return values
