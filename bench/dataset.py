"""Builds the benchmark database directly (not through HTTP): raw points and rollups.

Raw points: `raw_seconds` of 1 Hz points for 25 series (5 services x 5 types),
ending at the current minute, inserted with executemany (SQLite) or COPY
(PostgreSQL). Rollups: the raw window is summarised by metrics.series.rollups.summarise
(the code the server uses), and the days before it by the same function over
generated values, `per_minute` values per series minute, so the 7-day query
merges real sketches. Tier windows (5 min, 30 min, 1 h) are merged from those
minutes by metrics.series.rollups.merge_windows, as roll_up does. RollupState
marks everything before the end as rolled up and tiered.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

SERVICES = ("auth", "api", "database", "cache", "queue")
TYPES = ("latency", "error_rate", "throughput", "cpu", "memory")
TAGS = '{"region": "us-east"}'
CHUNK_SECONDS = 3600


@dataclass
class Dataset:
    raw_start: datetime
    raw_end: datetime
    raw_rows: int
    rollup_rows: int
    seconds: float


def healthy_values(metric_type: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Values inside every alert threshold, shaped like real telemetry."""
    if metric_type == "latency":
        return np.clip(rng.lognormal(np.log(80.0), 0.45, n), 1.0, 450.0)
    if metric_type == "error_rate":
        return np.clip(rng.beta(1.0, 150.0, n), 0.0, 0.04)
    if metric_type == "throughput":
        return np.clip(rng.normal(400.0, 60.0, n), 150.0, None)
    if metric_type == "cpu":
        return np.clip(rng.normal(45.0, 10.0, n), 1.0, 75.0)
    return np.clip(rng.normal(60.0, 5.0, n), 1.0, 75.0)


def db_text(epoch: int) -> str:
    """The timestamp spelling Django uses for SQLite (naive UTC, space separator)."""
    return datetime.fromtimestamp(epoch, tz=UTC).replace(tzinfo=None).isoformat(" ")


def _series_columns(n_seconds: int) -> tuple[np.ndarray, np.ndarray]:
    svc = np.array([s for s in SERVICES for _ in TYPES], dtype=object)
    mt = np.array([m for _ in SERVICES for m in TYPES], dtype=object)
    return np.tile(svc, n_seconds), np.tile(mt, n_seconds)


def _chunk_values(
    start: int, n_seconds: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Points for seconds [start, start + n): 25 per second, ordered by time like live ingestion."""
    ts = np.repeat(np.arange(start, start + n_seconds, dtype=np.int64), len(SERVICES) * len(TYPES))
    svc, mt = _series_columns(n_seconds)
    values = np.empty(len(ts))
    per_second = len(SERVICES) * len(TYPES)
    for k in range(per_second):
        metric_type = TYPES[k % len(TYPES)]
        values[k::per_second] = healthy_values(metric_type, n_seconds, rng)
    return svc, mt, ts, values


class Writer:
    """Plain DB-API writes for SQLite or PostgreSQL."""

    def __init__(self, sqlite_path: Path | None = None, pg_url: str | None = None) -> None:
        self.sqlite_path = sqlite_path
        if sqlite_path is not None:
            self.conn: Any = sqlite3.connect(sqlite_path)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=OFF")
            self.conn.execute("PRAGMA cache_size=-262144")
        else:
            import psycopg

            assert pg_url is not None, "a SQLite path or a PostgreSQL URL"
            self.conn = psycopg.connect(pg_url)

    @property
    def sqlite(self) -> bool:
        return self.sqlite_path is not None

    def ts(self, epoch: int) -> Any:
        return db_text(epoch) if self.sqlite else db_text(epoch) + "+00"

    def execute(self, sql: str, params: tuple = ()) -> None:
        self.conn.execute(sql.replace("%s", "?") if self.sqlite else sql, params)

    def points(self, svc: np.ndarray, mt: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
        texts: dict[int, str] = {}
        stamps = [texts.setdefault(t, self.ts(t)) for t in ts.tolist()]
        rows = zip(stamps, svc.tolist(), mt.tolist(), values.tolist(), [TAGS] * len(stamps), strict=True)
        if self.sqlite:
            self.conn.executemany(
                "INSERT INTO metrics_point (timestamp, service, metric_type, value, tags) VALUES (?, ?, ?, ?, ?)", rows
            )
        else:
            with (
                self.conn.cursor() as cur,
                cur.copy("COPY metrics_point (timestamp, service, metric_type, value, tags) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
        self.conn.commit()

    def rollups(self, summaries: Any) -> int:
        rows = summaries.records(self.ts)
        return self._insert_many(
            "INSERT INTO metrics_rollup (service, metric_type, minute, count, sum, min, max, sketch) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )

    def tiers(self, summaries: Any, width: int) -> int:
        from metrics.series.rollups import tier_records

        return self._insert_many(
            "INSERT INTO metrics_coarserollup (service, metric_type, width, start, count, sum, min, max, sketch, p50, p95, p99) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            tier_records(summaries, width, self.ts),
        )

    def _insert_many(self, sql: str, rows: list) -> int:
        if self.sqlite:
            self.conn.executemany(sql.replace("%s", "?"), rows)
        else:
            with self.conn.cursor() as cur:
                cur.executemany(sql, rows)
        self.conn.commit()
        return len(rows)

    def close(self) -> None:
        self.conn.commit()
        self.conn.close()


def build(
    writer: Writer,
    raw_seconds: int,
    rollup_days: float,
    per_minute: int,
    now: datetime | None = None,
    seed: int = 7,
    progress: Any = None,
) -> Dataset:
    from metrics.ingest.store import tags_hash
    from metrics.series.rollups import TIERS, MinuteSummaries, merge_windows, summarise

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    now = now or datetime.now(UTC)
    end = int(now.replace(second=0, microsecond=0).timestamp())
    raw_start = end - raw_seconds
    raw_start -= raw_start % 60
    raw_rows = rollup_rows = 0
    summaries: list[Any] = []  # every minute summary, for the tier windows
    # Raw window, hour by hour; its rollups from the very same values.
    for chunk_start in range(raw_start, end, CHUNK_SECONDS):
        n = min(CHUNK_SECONDS, end - chunk_start)
        svc, mt, ts, values = _chunk_values(chunk_start, n, rng)
        writer.points(svc, mt, ts, values)
        raw_rows += len(ts)
        summaries.append(summarise(svc, mt, ts.astype(np.float64), values))
        rollup_rows += writer.rollups(summaries[-1])
        if progress:
            progress(f"raw points {raw_rows:,}")
    # Older rollups: generated values, `per_minute` per series minute.
    old_start = end - int(rollup_days * 86400)
    old_start -= old_start % 60
    for chunk_start in range(old_start, raw_start, 86400):
        chunk_end = min(chunk_start + 86400, raw_start)
        minutes = np.arange(chunk_start, chunk_end, 60, dtype=np.int64)
        if not len(minutes):
            continue
        offsets = np.linspace(0, 59, per_minute).astype(np.int64)
        stamps = (minutes[:, None] + offsets[None, :]).ravel()
        n = len(stamps)
        svc = np.repeat(np.array(SERVICES, dtype=object), len(TYPES) * n)
        mt = np.tile(np.repeat(np.array(TYPES, dtype=object), n), len(SERVICES))
        ts = np.tile(stamps, len(SERVICES) * len(TYPES)).astype(np.float64)
        values = np.concatenate([healthy_values(m, n, rng) for _ in SERVICES for m in TYPES])
        summaries.append(summarise(svc, mt, ts, values))
        rollup_rows += writer.rollups(summaries[-1])
        if progress:
            progress(f"rollups {rollup_rows:,}")
    # Tier windows as roll_up leaves them: every whole window from the first minute to the end.
    tiered_from = min(old_start, raw_start)
    all_minutes = MinuteSummaries.concat(summaries)
    del summaries
    tier_rows = 0
    for width in TIERS:
        windows = merge_windows(all_minutes, width)
        tier_rows += writer.tiers(
            windows.take(np.flatnonzero((windows.minute >= tiered_from) & (windows.minute + width <= end))), width
        )
    if progress:
        progress(f"tier windows {tier_rows:,}")
    first, last = writer.ts(min(old_start, raw_start)), writer.ts(end)
    for service in SERVICES:
        writer.execute(
            "INSERT INTO metrics_service (name, first_seen, last_seen, series_count) VALUES (%s, %s, %s, %s)",
            (service, first, last, len(TYPES)),
        )
        for metric_type in TYPES:
            writer.execute(
                "INSERT INTO metrics_series (service, metric_type, tags_hash, first_seen) VALUES (%s, %s, %s, %s)",
                (service, metric_type, tags_hash({"region": "us-east"}), first),
            )
    writer.execute("DELETE FROM metrics_rollupstate")
    writer.execute(
        "INSERT INTO metrics_rollupstate (id, rolled_through, tiered_from) VALUES (1, %s, %s)",
        (writer.ts(end), writer.ts(tiered_from)),
    )
    writer.conn.commit()
    if writer.sqlite:
        # No ANALYZE: a deployed server has no sqlite_stat1 either, so the
        # planner sees what it sees in production.
        writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    else:
        writer.conn.commit()
        writer.conn.autocommit = True
        writer.execute("VACUUM ANALYZE")
    writer.close()
    return Dataset(
        raw_start=datetime.fromtimestamp(raw_start, tz=UTC),
        raw_end=datetime.fromtimestamp(end, tz=UTC),
        raw_rows=raw_rows,
        rollup_rows=rollup_rows,
        seconds=time.perf_counter() - t0,
    )


def forget_raw_rollups(writer: Writer, raw_start: datetime) -> None:
    """Make the raw window un-rolled-up again, so prune has to roll it up before deleting."""
    from metrics.series.rollups import TIERS

    since = int(raw_start.timestamp())
    writer.execute("DELETE FROM metrics_rollup WHERE minute >= %s", (writer.ts(since),))
    for width in TIERS:  # the windows that merged a minute just deleted
        writer.execute(
            "DELETE FROM metrics_coarserollup WHERE width = %s AND start > %s", (width, writer.ts(since - width))
        )
    writer.execute("UPDATE metrics_rollupstate SET rolled_through = NULL, tiered_from = NULL")
    writer.close()
