"""An open-loop (paced) HTTP load generator: a request every 1/rate s, each timed on its own.

Unlike wrk's closed loop, a slow answer does not slow the offered load, so the
latency seen while something else (prune) holds the database is the latency a
steady stream of agents would see. It runs on its own event loop in a thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx


class PacedLoad:
    def __init__(self, url: str, bodies: list[bytes], rate: float, max_in_flight: int = 64) -> None:
        self.url = url
        self.bodies = bodies
        self.rate = rate
        self.max_in_flight = max_in_flight
        self.samples: list[tuple[float, float, int]] = []  # (sent at, seconds, status; 0 = transport error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-load", daemon=True)

    def start(self) -> PacedLoad:
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, float, int]]:
        self._stop.set()
        self._thread.join(60)
        return self.samples

    def window(self, start: float, end: float) -> list[tuple[float, float, int]]:
        return [s for s in self.samples if start <= s[0] < end]

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight)
        headers = {"Content-Type": "application/json"}
        async with httpx.AsyncClient(limits=limits, timeout=30.0, headers=headers) as client:
            in_flight: set[asyncio.Task] = set()
            interval = 1.0 / self.rate
            next_at = time.perf_counter()
            i = 0
            while not self._stop.is_set():
                now = time.perf_counter()
                if now < next_at:
                    await asyncio.sleep(next_at - now)
                    continue
                body = self.bodies[i % len(self.bodies)]
                i += 1
                task = asyncio.create_task(self._one(client, body))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                next_at += interval
            if in_flight:
                await asyncio.wait(in_flight, timeout=30)

    async def _one(self, client: httpx.AsyncClient, body: bytes) -> None:
        sent = time.perf_counter()
        try:
            response = await client.post(self.url, content=body)
            status = response.status_code
        except httpx.HTTPError:
            status = 0
        self.samples.append((sent, time.perf_counter() - sent, status))


def summary(samples: list[tuple[float, float, int]]) -> dict[str, Any]:
    from .common import latency_summary

    lat = [s[1] for s in samples]
    out = latency_summary(lat)
    out["errors"] = sum(1 for s in samples if s[2] != 200)
    return out
