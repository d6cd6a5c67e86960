"""Figure 13: summary subscriptions, 1,000 dashboards while ingesting 20,000 points/s.

A sender posts `rate` points/s (requests of 1,000 points spread over ten
services, one metric type: ten series) for `seconds`. Receivers run in separate
processes, every client subscribed with `{"mode": "summary", "interval": 1}`
and no filter, so all of them share one encoded frame per tick. Receivers are
cheap: they cut `start` and `end` out of each frame with string searches
(C speed) and fully decode only one client's frames per process (the sample),
which checks that the series' counts add up to the points accepted.

- Missing ticks: for each client, every whole second between the first and
  last tick of the sending window must lie inside a frame it received
  (`start < second <= end`). A frame that covers several seconds (the server's
  loop stalled past a tick) covers them; a frame dropped for a slow client
  leaves them uncovered.
- Frame age: receive time minus the frame's `end` (wall clocks of one machine).
- Server RSS, sampled every 0.5 s; the server's CPU seconds per second of the
  sending window (from /proc, all threads); the slowest tick's own work
  (statistics, encodes, queueing) from /metrics/health.

Baseline, same run: frame age p99 of one summary client at the same ingest rate.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import orjson

from .common import (
    Config,
    Figure,
    RssSampler,
    cpu_seconds,
    fresh_dir,
    latency_summary,
    pg_recreate,
    ratio,
    running_server,
)

DB = "telemetry_bench_summary"
SERVICES = [f"bench-{i}" for i in range(10)]
PER_REQUEST = 1000
AGE_P99_LIMIT_S = 1.5
RSS_LIMIT_MB = 500.0


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _span(text: str) -> tuple[str, str]:
    """`start` and `end` of a summary frame by string search, without decoding it."""
    a = text.index('"start":"') + 9
    b = text.index('"', a)
    c = text.index('"end":"', b) + 7
    d = text.index('"', c)
    return text[a:b], text[c:d]


# --- receivers (separate processes) -----------------------------------------------


async def _client(url: str, origin: str, sample: bool, ready: Any, got: dict[str, Any]) -> None:
    """Read summary frames into `got` until cancelled (no timeout per frame: a cheap receive loop)."""
    from websockets.asyncio.client import connect
    from websockets.typing import Origin

    spans, ages = got["spans"], got["ages"]
    async with connect(
        url, origin=Origin(origin), compression=None, max_size=None, open_timeout=120, ping_interval=None
    ) as ws:
        await asyncio.wait_for(ws.recv(), 120)  # initial snapshot
        await ws.send(orjson.dumps({"action": "subscribe", "mode": "summary", "interval": 1}).decode())
        while orjson.loads(await asyncio.wait_for(ws.recv(), 120)).get("type") != "subscribed":
            pass
        with ready.get_lock():
            ready.value += 1
        while True:
            raw = await ws.recv()
            now = time.time()
            text = raw.decode() if isinstance(raw, bytes) else raw
            if text.startswith('{"type":"summary"'):
                start, end = _span(text)
                spans.append((_epoch(start), _epoch(end)))
                ages.append(now - spans[-1][1])
                got["frames"] += 1
                if sample:
                    got["counted"] += sum(s["count"] for s in orjson.loads(text)["series"])
            elif text.startswith('{"type":"lag"'):
                got["lags"] += orjson.loads(text)["dropped"]


def _receiver_process(url: str, origin: str, n: int, ready: Any, stop_at: Any, out: Any) -> None:
    async def main() -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        tasks = []
        for i in range(n):
            got: dict[str, Any] = {"spans": [], "ages": [], "frames": 0, "lags": 0, "counted": 0 if i == 0 else None}
            results.append(got)
            tasks.append(asyncio.create_task(_client(url, origin, i == 0, ready, got)))
            await asyncio.sleep(0.005)  # do not stampede the handshake backlog
        while not (stop_at.value and time.time() > stop_at.value):
            await asyncio.sleep(0.5)
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for got, outcome in zip(results, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                got["error"] = f"{type(outcome).__name__}: {outcome}"[:300]
        return results

    out.put(asyncio.run(main()))


# --- sender --------------------------------------------------------------------------


async def _send(url: str, rate: float, seconds: float) -> dict[str, Any]:
    """Post `rate` points/s in requests of PER_REQUEST points, round-robin over SERVICES."""
    interval = PER_REQUEST / rate
    requests = max(1, int(rate * seconds / PER_REQUEST))
    accepted = failures = 0
    headers = {"Content-Type": "application/json"}

    async def post(client: httpx.AsyncClient, first: int) -> None:
        nonlocal accepted, failures
        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        points = [
            {
                "timestamp": stamp,
                "service": SERVICES[(first + k) % len(SERVICES)],
                "metric_type": "throughput",
                "value": 1000.0 + (first + k) % 97,
            }
            for k in range(PER_REQUEST)
        ]
        try:
            r = await client.post(url, content=orjson.dumps(points), headers=headers)
            if r.status_code == 200:
                accepted += r.json()["accepted"]
            else:
                failures += 1
        except httpx.HTTPError:
            failures += 1

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=16)) as client:
        tasks = []
        start = time.perf_counter()
        for i in range(requests):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(post(client, i * PER_REQUEST)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {"planned": requests * PER_REQUEST, "accepted": accepted, "failed_requests": failures, "seconds": elapsed}


# --- one run -------------------------------------------------------------------------------


def summary_run(server: Any, clients: int, processes: int, rate: float, seconds: float, log: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready = ctx.Value("i", 0)
    stop_at = ctx.Value("d", 0.0)
    out = ctx.Queue()
    shares = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    procs = [
        ctx.Process(target=_receiver_process, args=(server.ws_url, server.url, n, ready, stop_at, out), daemon=True)
        for n in shares
        if n
    ]
    for p in procs:
        p.start()
    t0 = time.time()
    while ready.value < clients and time.time() - t0 < 300 and any(p.is_alive() for p in procs):
        time.sleep(0.1)
    connect_seconds = time.time() - t0
    log(f"    {ready.value}/{clients} clients subscribed in {connect_seconds:.1f} s; {rate:,.0f} points/s ...")
    sampler = RssSampler(server.proc.pid).start()
    cpu0 = cpu_seconds(server.proc.pid)
    receivers0 = [cpu_seconds(p.pid or 0) for p in procs]
    window_start = time.time()
    sent = asyncio.run(_send(server.url + "/metrics/ingest", rate, seconds))
    window_end = time.time()
    cpu1 = cpu_seconds(server.proc.pid)
    receivers1 = [cpu_seconds(p.pid or 0) for p in procs]
    # Two more ticks: the points of the last request are in a frame that closes after it.
    stop_at.value = window_end + 3.0
    results: list[dict[str, Any]] = []
    for _ in procs:
        try:
            results.extend(out.get(timeout=120))
        except Exception:
            break
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
    rss = sampler.stop()
    health = httpx.get(server.url + "/metrics/health", timeout=30).json()["streaming"]
    ok = [r for r in results if "error" not in r]
    # The ticks every client must have: each whole second of the sending window.
    expected = list(range(math.ceil(window_start) + 1, math.floor(window_end) + 1))
    missing_per_client = []
    for r in ok:
        covered: set[int] = set()
        for start, end in r["spans"]:
            covered.update(range(math.floor(start) + 1, math.floor(end) + 1))
        missing_per_client.append(sum(1 for s in expected if s not in covered))
    missing = sum(missing_per_client) + (clients - len(ok)) * len(expected)
    ages = np.concatenate([np.asarray(r["ages"]) for r in ok]) if ok else np.array([])
    long_frames = sum(1 for r in ok for start, end in r["spans"] if end - start > 1.0 + 1e-6 and start > window_start)
    samples = [r["counted"] for r in ok if r["counted"] is not None]
    return {
        "clients": clients,
        "clients_reporting": len(ok),
        "client_errors": [r["error"] for r in results if "error" in r][:5],
        "connect_seconds": round(connect_seconds, 2),
        "sender": sent,
        "ticks_expected_per_client": len(expected),
        "ticks_missing_total": missing,
        "clients_missing_ticks": sum(1 for m in missing_per_client if m) + (clients - len(ok)),
        "frames_total": int(sum(r["frames"] for r in ok)),
        "lag_dropped_total": int(sum(r["lags"] for r in ok)),
        "frames_spanning_a_stall": long_frames,
        "frame_age": latency_summary(ages),
        # Points counted in the frames of each process's one decoding client: all accepted, none twice.
        "sample_counts": samples,
        "sample_counts_match": bool(samples) and all(c == sent["accepted"] for c in samples),
        "server_cpu_seconds_per_second": (
            round((cpu1 - cpu0) / (window_end - window_start), 3) if cpu0 is not None and cpu1 is not None else None
        ),
        "receivers_cpu_seconds_per_second": round(
            sum((b or 0.0) - (a or 0.0) for a, b in zip(receivers0, receivers1, strict=True))
            / (window_end - window_start),
            3,
        ),
        "server_summary": health.get("summary"),
        "rss_mb_max": round(max(rss), 1) if rss else None,
        "rss_mb_start": round(rss[0], 1) if rss else None,
    }


def run(cfg: Config, log: Any) -> list[Figure]:
    data_dir = fresh_dir(cfg, "ws-summary")
    if cfg.postgres:
        pg_recreate(DB)
    rate = cfg.size(2000.0, 20000.0)
    clients = cfg.size(20, 1000)
    with running_server(cfg, data_dir, DB, MAX_SERIES_PER_SERVICE="100000") as server:
        # The many clients first, on an empty table: each connection's `initial` snapshot reads the
        # latest points, and after a minute at 20,000 points/s that read slows the handshakes down.
        log(f"  fig 13: {clients} summary clients, {rate:,.0f} points/s ...")
        many = summary_run(server, clients, cfg.size(1, 2), rate, cfg.size(5, 60), log)
        log(f"  fig 13 baseline: 1 summary client, {rate:,.0f} points/s ...")
        one = summary_run(server, 1, 1, rate, cfg.size(4, 15), log)
    p99_ms = many["frame_age"]["p99_ms"]
    passed = (
        many["clients_reporting"] == clients
        and many["ticks_missing_total"] == 0
        and p99_ms is not None
        and p99_ms < AGE_P99_LIMIT_S * 1000
        and many["rss_mb_max"] is not None
        and many["rss_mb_max"] < RSS_LIMIT_MB
        and many["sender"]["failed_requests"] == 0
        and many["sample_counts_match"]
    )
    return [
        Figure(
            key="13_ws_summary",
            title=f"{clients} summary clients, {rate:,.0f} points/s",
            value=p99_ms,
            unit="ms frame age p99",
            baseline=one["frame_age"]["p99_ms"],
            baseline_label="frame age p99 ms, 1 summary client, same rate",
            ratio=ratio(p99_ms, one["frame_age"]["p99_ms"]),
            target=f"every tick to every client; frame age p99 < {AGE_P99_LIMIT_S:g} s; RSS < {RSS_LIMIT_MB:g} MB",
            passed=passed,
            details={"clients": many, "baseline_one_client": one},
        )
    ]
