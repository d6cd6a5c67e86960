"""Figure 8: server memory with WebSocket clients that never read.

Moved here from the test suite (tests/test_streaming_live.py and
tests/test_ws_abuse.py): memory is a figure of a quiet machine, while the
tests keep the behaviour (the reader gets every point, the stuck clients are
cut off).

Two phases with the same load (`requests` posts of 50 points of ~3 KB each, so
~19 MB of frames per phase at full size): a reading client alone, then the
same reader with three clients that completed the handshake and never read
(a 4 KB receive buffer and a one-message queue, so they stop at the TCP level
at once). The server's anonymous RSS (heap and buffers, not the mmapped SQLite
file) is sampled after every request; each phase reports its peak growth.
The baseline is the phase without the stuck clients: had their frames been
buffered instead of bounded by WS_QUEUE_POINTS and cut off after
WS_STALL_TIMEOUT_SECONDS, the second phase would grow by ~19 MB per client
more.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets
from websockets.typing import Origin

from .common import Config, Figure, fresh_dir, pg_recreate, ratio, running_server

DB = "telemetry_bench_ws_memory"
STUCK_CLIENTS = 3
SLACK_MB = 12.0  # per phase, for the allocator and SQLite's cache: far below one stuck client's ~19 MB
LIMIT_MB = 150.0  # the whole run's growth, abusers included


def rss_anon_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no RssAnon in /proc status")


async def _measure(server: Any, requests: int, log: Any) -> dict[str, Any]:
    origin = Origin(server.url)
    service = f"memory-{int(time.time())}"
    point = {"service": service, "metric_type": "cpu", "value": 1.0, "tags": {f"k{i}": "x" * 250 for i in range(12)}}
    pid = server.proc.pid
    got = lag = 0
    async with (
        websockets.connect(server.ws_url, origin=origin, max_size=None, open_timeout=30) as reader,
        httpx.AsyncClient(timeout=60) as client,
    ):
        orjson.loads(await reader.recv())  # initial
        await reader.send(orjson.dumps({"action": "subscribe", "services": [service], "batch": True}).decode())
        while orjson.loads(await reader.recv())["type"] != "subscribed":
            pass

        async def read() -> None:
            nonlocal got, lag
            async for message in reader:
                frame = orjson.loads(message)
                if frame["type"] == "metrics":
                    got += len(frame["data"])
                elif frame["type"] == "lag":
                    lag += frame["dropped"]

        async def phase() -> float:
            baseline = peak = rss_anon_mb(pid)
            for _ in range(requests):
                response = await client.post(server.url + "/metrics/ingest", json=[point] * 50)
                response.raise_for_status()
                peak = max(peak, rss_anon_mb(pid))
                await asyncio.sleep(0.02)
            return peak - baseline

        task = asyncio.create_task(read())
        start = rss_anon_mb(pid)
        alone = await phase()
        log(f"    reader alone: +{alone:.1f} MB")
        stuck = []
        for _ in range(STUCK_CLIENTS):
            raw = socket.create_connection(("127.0.0.1", server.port))
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            ws = await websockets.connect(server.ws_url, origin=origin, sock=raw, max_queue=1, max_size=None)
            stuck.append((ws, raw))
        with_stuck = await phase()
        log(f"    with {STUCK_CLIENTS} stuck clients: +{with_stuck:.1f} MB")
        total = 2 * requests * 50
        deadline = time.monotonic() + 60
        while got < total and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        task.cancel()
        end = rss_anon_mb(pid)
        for ws, raw in stuck:
            ws.transport.abort()
            raw.close()
    return {
        "requests_per_phase": requests,
        "stuck_clients": STUCK_CLIENTS,
        "growth_alone_mb": round(alone, 1),
        "growth_with_stuck_mb": round(with_stuck, 1),
        "growth_total_mb": round(end - start, 1),
        "points_expected": total,
        "points_received": got,
        "lag_dropped": lag,
    }


def run(cfg: Config, log: Any) -> list[Figure]:
    data_dir = fresh_dir(cfg, "ws-memory")
    if cfg.postgres:
        pg_recreate(DB)
    # The suite's former settings: what a stuck client may hold, and when it is cut off.
    with running_server(cfg, data_dir, DB, WS_QUEUE_POINTS="1000", WS_STALL_TIMEOUT_SECONDS="3") as server:
        log(f"  fig 8: server memory, a reader alone vs with {STUCK_CLIENTS} clients that never read ...")
        details = asyncio.run(_measure(server, cfg.size(30, 120), log))
    alone, with_stuck = details["growth_alone_mb"], details["growth_with_stuck_mb"]
    passed = (
        with_stuck < alone + SLACK_MB
        and details["growth_total_mb"] < LIMIT_MB
        and details["points_received"] == details["points_expected"]
        and details["lag_dropped"] == 0
    )
    return [
        Figure(
            key="12_ws_memory",
            title=f"RSS growth with {STUCK_CLIENTS} stuck WS clients",
            value=with_stuck,
            unit="MB RSS growth",
            baseline=alone,
            baseline_label="RSS growth, same load, reader alone",
            ratio=ratio(with_stuck, alone),
            target=f"< baseline + {SLACK_MB:g} MB; total < {LIMIT_MB:g} MB; reader misses nothing",
            passed=passed,
            details=details,
        )
    ]
