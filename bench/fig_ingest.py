"""Figures 1 and 2: single-point and batched ingestion over HTTP, with wrk.

1. Single-point POST /metrics/ingest at 10 connections vs GET /metrics/ping
   (a trivial JSON view) on the same server: the ratio is what ingestion costs
   beyond Django + daphne's own per-request overhead.
2. 1,000-point requests on 4 connections vs plain sqlite3 executemany of the
   same rows into the same table and indexes (commit per 1,000 rows): the
   ratio is what validation, alerts and the HTTP round trip cost beyond the
   raw write.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .common import Config, Figure, fresh_dir, migrate_database, pg_recreate, ratio, run_wrk, running_server
from .dataset import SERVICES, TYPES, healthy_values

BATCH = 1000


def single_bodies(n: int = 100, seed: int = 1) -> list[bytes]:
    """One point per body, no timestamp (the server's now), rotating over the 25 series."""
    rng = np.random.default_rng(seed)
    bodies = []
    for i in range(n):
        service = SERVICES[i % len(SERVICES)]
        metric_type = TYPES[(i // len(SERVICES)) % len(TYPES)]
        value = float(healthy_values(metric_type, 1, rng)[0])
        bodies.append(
            orjson.dumps(
                {
                    "service": service,
                    "metric_type": metric_type,
                    "value": round(value, 4),
                    "tags": {"region": "us-east"},
                }
            )
        )
    return bodies


def batch_points(seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    points = []
    for i in range(BATCH):
        service = SERVICES[i % len(SERVICES)]
        metric_type = TYPES[(i // len(SERVICES)) % len(TYPES)]
        value = float(healthy_values(metric_type, 1, rng)[0])
        points.append(
            {"service": service, "metric_type": metric_type, "value": round(value, 4), "tags": {"region": "us-east"}}
        )
    return points


def batch_bodies(n: int = 8) -> list[bytes]:
    return [orjson.dumps({"metrics": batch_points(seed)}) for seed in range(n)]


def sqlite_baseline(db_path: Path, seconds: float) -> dict[str, float]:
    """Plain sqlite3: the same rows, 1,000 per executemany and commit, same pragmas as the server."""
    from .dataset import db_text

    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA cache_size=-65536")
    rows_per_body = [
        [(p["service"], p["metric_type"], p["value"], orjson.dumps(p["tags"]).decode()) for p in batch_points(seed)]
        for seed in range(8)
    ]
    sql = "INSERT INTO metrics_point (timestamp, service, metric_type, value, tags) VALUES (?, ?, ?, ?, ?)"
    done = 0
    i = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        stamp = db_text(int(time.time()))
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, [(stamp, *row) for row in rows_per_body[i % len(rows_per_body)]])
        conn.execute("COMMIT")
        done += BATCH
        i += 1
    elapsed = time.perf_counter() - start
    conn.close()
    return {"metrics_per_s": done / elapsed, "rows": done, "seconds": elapsed}


def pg_baseline(database: str, seconds: float) -> dict[str, float]:
    import psycopg

    rows_per_body = [
        [(p["service"], p["metric_type"], p["value"], orjson.dumps(p["tags"]).decode()) for p in batch_points(seed)]
        for seed in range(8)
    ]
    sql = "INSERT INTO metrics_point (timestamp, service, metric_type, value, tags) VALUES (now(), %s, %s, %s, %s)"
    done = i = 0
    with psycopg.connect(f"postgres://postgres@127.0.0.1:5432/{database}") as conn:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows_per_body[i % len(rows_per_body)])
            done += BATCH
            i += 1
        elapsed = time.perf_counter() - start
    return {"metrics_per_s": done / elapsed, "rows": done, "seconds": elapsed}


def run(cfg: Config, log: Any) -> list[Figure]:
    seconds = cfg.size(1, 10)
    data_dir = fresh_dir(cfg, "ingest")
    database = "telemetry_bench_ingest"
    if cfg.postgres:
        pg_recreate(database)
    figures: list[Figure] = []
    with running_server(cfg, data_dir, database) as server:
        singles = single_bodies()
        batches = batch_bodies()
        # Warm up both paths (imports, caches, series rows) before measuring.
        if not cfg.quick:
            run_wrk(server.url + "/metrics/ingest", 1, 2, singles, data_dir)
            run_wrk(server.url + "/metrics/ping", 1, 2, None, data_dir)
        log("  fig 1: GET /metrics/ping (baseline) ...")
        ping = run_wrk(server.url + "/metrics/ping", seconds, 10, None, data_dir)
        log("  fig 1: POST /metrics/ingest single points ...")
        single = run_wrk(server.url + "/metrics/ingest", seconds, 10, singles, data_dir)
        p99_ms = single["p99_us"] / 1000.0
        r1 = ratio(single["rps"], ping["rps"])
        ok1 = single["errors"] == 0 and r1 is not None and r1 >= 0.8 and p99_ms < 50
        figures.append(
            Figure(
                key="1_ingest_single",
                title="single-point ingest, req/s at 10 conns",
                value=round(single["rps"], 1),
                unit="req/s",
                baseline=round(ping["rps"], 1),
                baseline_label="GET /metrics/ping req/s",
                ratio=r1,
                target=">= 0.8x baseline; p99 < 50 ms",
                passed=ok1,
                details={"ingest": single, "ping": ping, "p99_ms": p99_ms, "ping_p99_ms": ping["p99_us"] / 1000.0},
            )
        )
        log("  fig 2: POST /metrics/ingest 1,000-point batches ...")
        if not cfg.quick:
            run_wrk(server.url + "/metrics/ingest", 1, 4, batches, data_dir)
        batched = run_wrk(server.url + "/metrics/ingest", seconds, 4, batches, data_dir)
    metrics_per_s = batched["rps"] * BATCH
    log("  fig 2: plain executemany baseline ...")
    if cfg.postgres:
        base = pg_baseline(database, seconds)
        base_label = "psycopg executemany, same rows/table/indexes"
    else:
        base_dir = fresh_dir(cfg, "ingest-baseline")
        migrate_database(cfg, base_dir)
        base = sqlite_baseline(base_dir / "telemetry.sqlite3", seconds)
        base_label = "sqlite3 executemany, same rows/table/indexes"
    r2 = ratio(metrics_per_s, base["metrics_per_s"])
    # Issue 17: >= 0.5x the bare insert; 100 k/s on SQLite, 60 k/s on PostgreSQL.
    floor = 60_000 if cfg.postgres else 100_000
    ok2 = batched["errors"] == 0 and metrics_per_s >= floor and r2 is not None and r2 >= 0.5
    figures.append(
        Figure(
            key="2_ingest_batched",
            title="batched ingest (1,000/req, 4 conns)",
            value=round(metrics_per_s),
            unit="metrics/s",
            baseline=round(base["metrics_per_s"]),
            baseline_label=base_label,
            ratio=r2,
            target=f">= {floor:,}/s and >= 0.5x baseline",
            passed=ok2,
            details={"wrk": batched, "baseline": base},
        )
    )
    return figures
