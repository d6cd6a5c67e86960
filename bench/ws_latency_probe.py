"""Quick ingest -> WebSocket frame latency probe (the standing figure is bench/fig_ws.py, figure 4).

    python -m bench.ws_latency_probe --clients 1 --rate 10 --seconds 10
    python -m bench.ws_latency_probe --clients 100 --rate 500 --per-request 10 --batch

Starts a daphne on a free port (own SQLite, in-memory layer; --redis for the
Redis pub/sub layer), connects N `websockets` clients, posts points whose value
is a sequence number, and takes each point's latency as frame arrival minus the
moment its request was sent. Clients and sender share this process, so under
heavy load the figure includes the probe's own parsing time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.live import LiveServer  # noqa: E402


async def run(args: argparse.Namespace) -> dict:
    env = {"DATABASE_URL": "", "REQUIRE_API_KEY": "0", "TELEMETRY_SCHEDULER": "0", "REDIS_URL": ""}
    if args.redis:
        env.update(REDIS_URL=args.redis, CHANNEL_LAYER_PREFIX=f"probe{int(time.time())}")
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    rtts: list[float] = []
    answers: list[float] = []
    total = int(args.rate * args.seconds)
    with tempfile.TemporaryDirectory() as tmp, LiveServer(Path(tmp), env=env) as server:
        sockets = []
        for _ in range(args.clients):
            ws = await websockets.connect(server.ws_url, max_size=None)
            await ws.recv()
            await ws.send(orjson.dumps({"action": "subscribe", "services": ["probe"], "batch": args.batch}).decode())
            await ws.recv()
            sockets.append(ws)
        counts = [0] * len(sockets)

        async def read(i: int, ws) -> None:
            async for raw in ws:
                now = time.perf_counter()
                frame = orjson.loads(raw)
                kind = frame["type"]
                points = frame["data"] if kind == "metrics" else [frame["data"]] if kind == "metric" else []
                if kind == "pong":
                    rtts.append(now - frame["id"])
                for p in points:
                    latencies.append(now - sent_at[int(p["value"])])
                counts[i] += len(points)
                if counts[i] >= total:
                    return

        readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(sockets)]
        loop = asyncio.get_running_loop()
        requests = total // args.per_request
        async with httpx.AsyncClient(timeout=30) as client:
            start = loop.time()
            for n in range(requests):
                body = [
                    {"service": "probe", "metric_type": "throughput", "value": float(n * args.per_request + j)}
                    for j in range(args.per_request)
                ]
                now = time.perf_counter()
                for j in range(args.per_request):
                    sent_at[n * args.per_request + j] = now
                response = await client.post(
                    server.url + "/metrics/ingest",
                    content=orjson.dumps(body),
                    headers={"Content-Type": "application/json"},
                )
                response.raise_for_status()
                answers.append(time.perf_counter() - now)
                if n % 5 == 0:
                    await sockets[0].send(orjson.dumps({"action": "ping", "id": time.perf_counter()}).decode())
                pause = start + (n + 1) * args.per_request / args.rate - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
        await asyncio.wait_for(asyncio.gather(*readers), 60)
        for ws in sockets:
            await ws.close()

    def pct(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)) * 1000, 2) if values else float("nan")

    return {
        "clients": args.clients,
        "rate": args.rate,
        "batch": args.batch,
        "layer": "redis" if args.redis else "memory",
        "points_expected_per_client": total,
        "points_missing": total * args.clients - len(latencies),
        "latency_ms": {"p50": pct(latencies, 50), "p99": pct(latencies, 99), "max": pct(latencies, 100)},
        "ping_rtt_ms": {"p50": pct(rtts, 50), "p99": pct(rtts, 99)},
        "ingest_answer_ms": {"p50": pct(answers, 50), "p99": pct(answers, 99)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--rate", type=float, default=10, help="points per second")
    parser.add_argument("--per-request", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--batch", action="store_true")
    parser.add_argument("--redis", default="", help="REDIS_URL for the Redis pub/sub layer")
    print(orjson.dumps(asyncio.run(run(parser.parse_args())), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
