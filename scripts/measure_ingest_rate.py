"""Single-point ingest rate against a real daphne (SQLite default): the issue-2 "500 req/s" check.

    .venv/bin/python scripts/measure_ingest_rate.py [--clients 10] [--seconds 10] [--path /metrics/ingest]

Starts a server on a free port with its own SQLite file (tests/live.py), runs N
concurrent httpx clients posting one point per request, and prints requests/s
plus the server process's CPU time per request (the figure that stays
meaningful on a shared, loaded machine). Not a test: speed is not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.live import LiveServer  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def client(url: str, stop: float, counts: dict[int, int], index: int) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        n = 0
        while time.monotonic() < stop:
            point = {
                "service": f"svc{index}",
                "metric_type": "latency",
                "value": 100.0 + n % 50,
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "tags": {"endpoint": "/users"},
            }
            response = await (http.get(url) if url.endswith("/ping") else http.post(url, json=point))
            counts[response.status_code] = counts.get(response.status_code, 0) + 1
            n += 1


async def measure(server: LiveServer, path: str, clients: int, seconds: float) -> None:
    url = server.url + path
    async with httpx.AsyncClient() as http:  # warm-up: connections, caches
        for _ in range(20):
            await http.post(server.url + "/metrics/ingest", json={"service": "warm", "metric_type": "cpu", "value": 1})
    counts: dict[int, int] = {}
    cpu0, t0 = cpu_seconds(server.proc.pid), time.monotonic()  # type: ignore[union-attr]
    await asyncio.gather(*(client(url, t0 + seconds, counts, i) for i in range(clients)))
    elapsed, cpu = time.monotonic() - t0, cpu_seconds(server.proc.pid) - cpu0  # type: ignore[union-attr]
    total = sum(counts.values())
    print(
        f"{path}: {total} requests in {elapsed:.1f} s = {total / elapsed:.0f} req/s with {clients} clients; statuses {counts}"
    )
    print(f"server CPU {cpu:.2f} s = {cpu / total * 1000:.2f} ms/request (~{total / cpu:.0f} req/s per free core)")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--path", default="/metrics/ingest")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {"DATABASE_URL": "", "REDIS_URL": "", "DEBUG": "0", "SECRET_KEY": "m" * 50}
        env.update({"REQUIRE_API_KEY": "0", "SECURE_COOKIES": "0"})
        with LiveServer(Path(tmp), env=env) as server:
            asyncio.run(measure(server, args.path, args.clients, args.seconds))


if __name__ == "__main__":
    main()
