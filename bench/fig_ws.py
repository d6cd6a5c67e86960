"""Figures 4 and 5: ingest -> WebSocket frame latency, and 1,000 concurrent clients.

A sender posts points to /metrics/ingest at a fixed rate; each point's
timestamp is the wall-clock moment its request was sent and its value encodes
a sequence number (throughput = 1000 + seq, always healthy, so no alerts and
one series: unique tags would trip the cardinality guard). Receivers run in
separate processes (`websockets` library, no compression) so parsing frames
does not share a CPU with the sender; they compute latency as arrival time
minus the point's timestamp, and check every sequence number arrived.

4. 1 client, per-point frames, 10 points/s; 100 clients, batch mode, 5,000
   points/s. Baseline: {"action": "ping"} -> pong round trip on the same
   connections, every 0.5 s, during the same run.
5. 1,000 clients, batch mode, 60 s at 1,000 points/s: receivers count points
   per frame (str.count, C speed) instead of decoding them, and the server's
   RSS is sampled every 0.5 s.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import orjson

from .common import Config, Figure, fresh_dir, latency_summary, pg_recreate, ratio, rss_mb, running_server

DB = "telemetry_bench_ws"
SEQ_BASE = 1000.0


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- receivers (separate processes) -------------------------------------------------


async def _client(
    url: str,
    origin: str,
    batch: bool,
    decode: bool,
    pings: bool,
    planned: int,
    ready: Any,
    expected: Any,
    deadline: Any,
) -> dict[str, Any]:
    from websockets.asyncio.client import connect
    from websockets.typing import Origin

    seen = bytearray(planned) if decode else None
    latencies: list[float] = []
    rtts: list[float] = []
    count = frames = lags = duplicates = 0
    async with connect(
        url,
        origin=Origin(origin),
        compression=None,
        max_size=None,
        open_timeout=120,
        ping_interval=None,
        close_timeout=5,
    ) as ws:
        # Bounded: a connection the server accepts but never serves must not hang the run.
        await asyncio.wait_for(ws.recv(), 120)  # initial snapshot
        await ws.send(orjson.dumps({"action": "subscribe", "services": ["bench"], "batch": batch}).decode())
        while True:
            msg = orjson.loads(await asyncio.wait_for(ws.recv(), 120))
            if msg.get("type") == "subscribed":
                break
        with ready.get_lock():
            ready.value += 1

        async def ping_loop() -> None:
            while True:
                await asyncio.sleep(0.5)
                await ws.send(orjson.dumps({"action": "ping", "id": time.time()}).decode())

        pinger = asyncio.create_task(ping_loop()) if pings else None
        try:
            while True:
                want = expected.value
                if (want >= 0 and count >= want) or (deadline.value and time.time() > deadline.value):
                    break
                try:
                    frame = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                text = frame.decode() if isinstance(frame, bytes) else frame
                now = time.time()
                if not decode and text.startswith('{"type":"metrics"'):
                    count += text.count('"value":')
                    frames += 1
                    continue
                msg = orjson.loads(text)
                kind = msg.get("type")
                if kind == "pong":
                    if isinstance(msg.get("id"), float):
                        rtts.append(now - msg["id"])
                    continue
                if kind == "lag":
                    lags += int(msg.get("dropped", 0))
                    continue
                if kind == "metrics":
                    points = msg["data"]
                elif kind == "metric":
                    points = [msg["data"]]
                else:
                    continue
                frames += 1
                for p in points:
                    count += 1
                    if seen is not None:
                        seq = int(p["value"] - SEQ_BASE)
                        if 0 <= seq < planned:
                            if seen[seq]:
                                duplicates += 1
                            seen[seq] = 1
                        latencies.append(now - _parse_ts(p["timestamp"]))
        finally:
            if pinger:
                pinger.cancel()
    return {
        "count": count,
        "frames": frames,
        "lags": lags,
        "duplicates": duplicates,
        "distinct": sum(seen) if seen is not None else None,
        "latencies": latencies,
        "rtts": rtts,
    }


def _receiver_process(
    url: str, origin: str, n: int, opts: dict, ready: Any, expected: Any, deadline: Any, out: Any
) -> None:
    async def main() -> list[Any]:
        tasks = []
        for _ in range(n):
            tasks.append(
                asyncio.create_task(_client(url, origin, ready=ready, expected=expected, deadline=deadline, **opts))
            )
            await asyncio.sleep(0.005)  # do not stampede the handshake backlog
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    clean = []
    for r in results:
        if isinstance(r, BaseException):
            clean.append({"error": f"{type(r).__name__}: {r}"[:300]})
        else:
            r["latencies"] = np.asarray(r["latencies"], dtype=np.float64)
            r["rtts"] = np.asarray(r["rtts"], dtype=np.float64)
            clean.append(r)
    out.put(clean)


# --- sender --------------------------------------------------------------------------


async def _send(url: str, rate: float, per_request: int, seconds: float) -> dict[str, Any]:
    """Post `rate` points/s in requests of `per_request` points for `seconds`; returns what was accepted."""
    interval = per_request / rate
    total = int(rate * seconds)
    accepted = failures = 0
    statuses: dict[int, int] = {}
    headers = {"Content-Type": "application/json"}

    async def post(client: httpx.AsyncClient, first: int, n: int) -> None:
        nonlocal accepted, failures
        stamp = _stamp(time.time())
        points = [
            {"timestamp": stamp, "service": "bench", "metric_type": "throughput", "value": SEQ_BASE + first + k}
            for k in range(n)
        ]
        try:
            r = await client.post(url, content=orjson.dumps(points), headers=headers)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                accepted += r.json()["accepted"]
            else:
                failures += 1
        except httpx.HTTPError:
            failures += 1

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=16)) as client:
        tasks = []
        start = time.perf_counter()
        sent = 0
        while sent < total:
            at = start + (sent / per_request) * interval
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            n = min(per_request, total - sent)
            tasks.append(asyncio.create_task(post(client, sent, n)))
            sent += n
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {
        "planned": total,
        "accepted": accepted,
        "failed_requests": failures,
        "statuses": statuses,
        "seconds": elapsed,
    }


# --- one streaming run ------------------------------------------------------------------


def stream_run(
    server: Any,
    clients: int,
    processes: int,
    rate: float,
    per_request: int,
    seconds: float,
    batch: bool,
    decode: bool,
    pings: bool,
    log: Any,
    drain: float = 20.0,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready = ctx.Value("i", 0)
    expected = ctx.Value("q", -1)
    deadline = ctx.Value("d", 0.0)
    out = ctx.Queue()
    planned = int(rate * seconds)
    opts = {"batch": batch, "decode": decode, "pings": pings, "planned": planned}
    origin = server.url
    shares = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    procs = [
        ctx.Process(
            target=_receiver_process, args=(server.ws_url, origin, n, opts, ready, expected, deadline, out), daemon=True
        )
        for n in shares
        if n
    ]
    for p in procs:
        p.start()
    t0 = time.time()
    while ready.value < clients and time.time() - t0 < 180:
        if not any(p.is_alive() for p in procs):
            break
        time.sleep(0.1)
    connect_seconds = time.time() - t0
    log(f"    {ready.value}/{clients} clients subscribed in {connect_seconds:.1f} s; sending {planned:,} points ...")
    rss: list[float] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.is_set():
            value = rss_mb(server.proc.pid)
            if value is not None:
                rss.append(value)
            stop_sampling.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sent = asyncio.run(_send(server.url + "/metrics/ingest", rate, per_request, seconds))
    expected.value = sent["accepted"]
    deadline.value = time.time() + drain
    results: list[dict[str, Any]] = []
    for _ in procs:
        try:
            results.extend(out.get(timeout=drain + 60))
        except Exception:
            break
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
    stop_sampling.set()
    sampler.join(5)
    ok_clients = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    latencies = np.concatenate([r["latencies"] for r in ok_clients]) if ok_clients else np.array([])
    rtts = np.concatenate([r["rtts"] for r in ok_clients]) if ok_clients else np.array([])
    complete = [
        r
        for r in ok_clients
        if r["count"] >= sent["accepted"] and (r["distinct"] is None or r["distinct"] >= sent["accepted"])
    ]
    return {
        "clients": clients,
        "clients_reporting": len(ok_clients),
        "client_errors": errors[:5],
        "clients_complete": len(complete),
        "points_missing_total": int(
            sum(
                max(0, sent["accepted"] - (r["distinct"] if r["distinct"] is not None else r["count"]))
                for r in ok_clients
            )
        )
        + (clients - len(ok_clients)) * sent["accepted"],
        "lag_dropped_total": int(sum(r["lags"] for r in ok_clients)),
        "duplicates_total": int(sum(r["duplicates"] for r in ok_clients)),
        "frames_total": int(sum(r["frames"] for r in ok_clients)),
        "connect_seconds": round(connect_seconds, 2),
        "sender": sent,
        "latency": latency_summary(latencies),
        "ping_rtt": latency_summary(rtts),
        "rss_mb_max": round(max(rss), 1) if rss else None,
        "rss_mb_start": round(rss[0], 1) if rss else None,
    }


def run(cfg: Config, log: Any) -> list[Figure]:
    figures: list[Figure] = []
    data_dir = fresh_dir(cfg, "ws")
    if cfg.postgres:
        pg_recreate(DB)
    with running_server(cfg, data_dir, DB) as server:
        log("  fig 4a: 1 client, 10 points/s ...")
        one = stream_run(server, 1, 1, 10.0, 1, cfg.size(2, 20), batch=False, decode=True, pings=True, log=log)
        p50 = one["latency"]["p50_ms"]
        base = one["ping_rtt"]["p50_ms"]
        figures.append(
            Figure(
                key="4a_ws_latency_1",
                title="ingest->frame p50, 1 client 10/s",
                value=p50,
                unit="ms p50",
                baseline=base,
                baseline_label="ping/pong RTT p50 ms, same connection",
                ratio=ratio(p50, base),
                target="p50 < 5 ms; zero missing",
                passed=p50 is not None
                and p50 < 5
                and one["points_missing_total"] == 0
                and one["sender"]["failed_requests"] == 0,
                details=one,
            )
        )
        log("  fig 4b: 100 clients (batch), 5,000 points/s ...")
        many = stream_run(
            server,
            cfg.size(20, 100),
            cfg.size(1, 2),
            cfg.size(1000.0, 5000.0),
            100,
            cfg.size(2, 10),
            batch=True,
            decode=True,
            pings=True,
            log=log,
        )
        p99 = many["latency"]["p99_ms"]
        base = many["ping_rtt"]["p99_ms"]
        figures.append(
            Figure(
                key="4b_ws_latency_100",
                title=f"ingest->frame p99, {many['clients']} clients batch",
                value=p99,
                unit="ms p99",
                baseline=base,
                baseline_label="ping/pong RTT p99 ms, same connections",
                ratio=ratio(p99, base),
                # Moved here from tests/test_streaming_live.py: many clients keep up with no lag notice.
                target="p99 < 100 ms; zero missing; zero lag",
                passed=p99 is not None
                and p99 < 100
                and many["points_missing_total"] == 0
                and many["lag_dropped_total"] == 0
                and many["sender"]["failed_requests"] == 0,
                details=many,
            )
        )
    data_dir = fresh_dir(cfg, "ws-fanout")
    if cfg.postgres:
        pg_recreate(DB)
    with running_server(cfg, data_dir, DB) as server:
        clients = cfg.size(20, 1000)
        log(f"  fig 5: {clients} clients (batch), 1,000 points/s ...")
        fan = stream_run(
            server,
            clients,
            cfg.size(1, 4),
            1000.0,
            100,
            cfg.size(2, 60),
            batch=True,
            decode=False,
            pings=False,
            log=log,
        )
    ok = (
        fan["clients_complete"] == clients
        and fan["points_missing_total"] == 0
        and fan["rss_mb_max"] is not None
        and fan["rss_mb_max"] < 500
        and fan["sender"]["failed_requests"] == 0
    )
    figures.append(
        Figure(
            key="5_ws_fanout",
            title=f"{clients} WS clients, 1,000 points/s",
            value=fan["rss_mb_max"],
            unit="MB RSS max",
            target="every client gets every point; RSS < 500 MB",
            passed=ok,
            details=fan,
        )
    )
    return figures
