"""Figure 14: what a second daphne process buys, both processes on one database.

Two daphne processes are started on the configured backend (one SQLite file
and each its own in-memory layer; or one PostgreSQL database and one Redis),
and the ingest loads of figures 1 and 2 are run with wrk, 2 threads:

- "1 process": both wrk threads on process A's port (B is up but idle);
- "2 processes": one wrk thread per port, so each process gets half the
  connections (wrk's closed loop: a slower process answers fewer requests).

The arms alternate (1, 2, 2, 1 in a full run) so drift on this shared machine
falls on both. 14a is single-point ingest at 10 connections (req/s, p99);
14b is 1,000-point batches at 4 connections (metrics/s). The ratio is
2-process / 1-process. There is no target: the figure says what a second
process buys on this backend. On SQLite both processes take the one file's
write lock in turn, so little or no gain is expected there.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from statistics import mean
from typing import Any

import httpx

from .common import (
    CORES,
    Config,
    Figure,
    LiveServer,
    fresh_dir,
    migrate_database,
    pg_recreate,
    ratio,
    run_wrk,
    server_overrides,
)
from .fig_ingest import BATCH, batch_bodies, single_bodies

DATABASE = "telemetry_bench_scale"
TARGET = "none (informational)"
JSON = {"Content-Type": "application/json"}


def arms_order(quick: bool) -> list[int]:
    """Process counts in measuring order: ABBA cancels a linear drift; quick measures each once."""
    return [1, 2] if quick else [1, 2, 2, 1]


def wrk_ports(servers: list[LiveServer], processes: int) -> list[int]:
    """One port per wrk thread (2 threads): both on the first process, or one each."""
    return [servers[0].port, servers[0].port] if processes == 1 else [s.port for s in servers[:2]]


@contextmanager
def running_servers(cfg: Config, data_dir: Path, count: int) -> Iterator[list[LiveServer]]:
    """`count` daphne processes on one database (same SQLite file, or same PostgreSQL + Redis)."""
    env = server_overrides(cfg, DATABASE)
    migrate_database(cfg, data_dir, DATABASE)
    servers = []
    for _ in range(count):
        server = LiveServer(data_dir, migrate_first=False, env=env)
        if not cfg.postgres:
            # tests.live keeps an inherited DATABASE_URL; the SQLite bench must not.
            server.env.pop("DATABASE_URL", None)
            server.env.pop("REDIS_URL", None)
        servers.append(server)
    with ExitStack() as stack:
        for server in servers:
            stack.callback(server.stop)
        # Started side by side: each start is seconds of imports on a loaded box.
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda s: s.start(timeout=60), servers))
        yield servers


def measure(
    cfg: Config, servers: list[LiveServer], bodies: list[bytes], connections: int, data_dir: Path, log: Any
) -> dict[int, list[dict[str, Any]]]:
    seconds = cfg.size(1, 10)
    url = servers[0].url + "/metrics/ingest"
    for server in servers:  # first requests import and open the database: not measured, even in quick mode
        httpx.post(server.url + "/metrics/ingest", content=bodies[0], headers=JSON, timeout=60).raise_for_status()
    if not cfg.quick:
        for processes in (1, 2):
            run_wrk(url, 1, connections, bodies, data_dir, threads=2, ports=wrk_ports(servers, processes))
    rounds: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for processes in arms_order(cfg.quick):
        log(f"    {processes} process(es), {connections} conns, {seconds} s ...")
        result = run_wrk(url, seconds, connections, bodies, data_dir, threads=2, ports=wrk_ports(servers, processes))
        rounds[processes].append(result)
    return rounds


def figure(
    key: str, title: str, unit: str, per_request: int, rounds: dict[int, list[dict[str, Any]]], common: dict[str, Any]
) -> Figure:
    rate = {n: mean(r["rps"] for r in rounds[n]) * per_request for n in (1, 2)}
    p99 = {n: mean(r["p99_us"] for r in rounds[n]) / 1000.0 for n in (1, 2)}
    return Figure(
        key=key,
        title=title,
        value=round(rate[2], 1),
        unit=unit,
        baseline=round(rate[1], 1),
        baseline_label="1 daphne process (2nd idle), same database, same run",
        ratio=ratio(rate[2], rate[1]),
        target=TARGET,
        passed=None,
        details={
            "p99_ms_1_process": round(p99[1], 3),
            "p99_ms_2_processes": round(p99[2], 3),
            "errors": {n: sum(r["errors"] for r in rounds[n]) for n in (1, 2)},
            "rounds_1_process": rounds[1],
            "rounds_2_processes": rounds[2],
            **common,
        },
    )


def run(cfg: Config, log: Any) -> list[Figure]:
    data_dir = fresh_dir(cfg, "scale")
    if cfg.postgres:
        pg_recreate(DATABASE)
    with running_servers(cfg, data_dir, 2) as servers:
        common = {
            "backend": "postgresql+redis" if cfg.postgres else "sqlite+inmemory",
            "processes_env": [
                {
                    "port": s.port,
                    "DATABASE_URL": s.env.get("DATABASE_URL", "(SQLite) " + str(data_dir / "telemetry.sqlite3")),
                    "REDIS_URL": s.env.get("REDIS_URL", "(in-memory layer, per process)"),
                    "health": httpx.get(s.url + "/metrics/health", timeout=10).json().get("checks"),
                }
                for s in servers
            ],
            "order": arms_order(cfg.quick),
            "load": "wrk -t2, Lua setup() sends thread k to port k (1 process: both threads on A)",
            "machine": f"{CORES} cores shared by wrk's 2 threads and the server processes; "
            "the load generator competes with the servers",
        }
        log("  fig 14a: single-point ingest, 1 vs 2 processes ...")
        single = measure(cfg, servers, single_bodies(), 10, data_dir, log)
        log("  fig 14b: 1,000-point batches, 1 vs 2 processes ...")
        batched = measure(cfg, servers, batch_bodies(), 4, data_dir, log)
    return [
        figure("14a_scale_single", "single-point ingest, 2 procs vs 1 (10 conns)", "req/s", 1, single, common),
        figure(
            "14b_scale_batched",
            "batched ingest, 2 procs vs 1 (1,000/req, 4 conns)",
            "metrics/s",
            BATCH,
            batched,
            common,
        ),
    ]
