"""Per-minute rollups: computing them from raw points, keeping them current, merging them.

`rolled_through` (RollupState) is the boundary: every complete minute before it
has its Rollup rows; minutes from it onwards are read from raw points. A late
point for a minute before the boundary recomputes that minute inside the ingest
transaction, so long-range answers always match raw answers.

Coarser tiers (CoarseRollup, widths in TIERS) merge the minute rollups of whole
5-minute, 30-minute and hour windows, so long ranges read a few thousand rows
instead of every minute. A window is written, from its minute rollups, in the
transaction whose roll-up completes it, and rewritten, from its minute rollups
again, in the transaction where a late point recomputes one of its minutes: a
tier answer is the minute answer, whatever arrives when.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.db import connection, transaction

from metrics.models import RollupState
from metrics.series import sketch

log = logging.getLogger(__name__)
MINUTE = 60
PERCENTILES = (0.50, 0.95, 0.99)


def epoch_sql(column: str = "timestamp") -> str:
    """SQL for a datetime column as float Unix seconds (no per-row Python parsing)."""
    if connection.vendor == "sqlite":
        # julianday() of the full value loses ~5 µs, so a point at hh:mm:00 would
        # land in the previous minute: round the whole seconds of the stored text
        # (exact), then add its ".ffffff" suffix. (No strftime('%s'): Django
        # would read "%s" as a parameter placeholder.)
        return (
            f"(ROUND((julianday(substr({column}, 1, 19)) - 2440587.5) * 86400.0)"
            f" + COALESCE(CAST(substr({column}, 20) AS REAL), 0.0))"
        )
    return f"EXTRACT(EPOCH FROM {column})::float8"


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _db_minute(epoch_seconds: int) -> Any:
    return db_ts(from_epoch(epoch_seconds))


def floor_minute(dt: datetime) -> datetime:
    return dt.replace(second=0, microsecond=0)


def db_ts(dt: datetime):  # type: ignore[no-untyped-def]
    if connection.vendor == "sqlite":
        return dt.astimezone(UTC).replace(tzinfo=None).isoformat(" ")
    return dt


@dataclass
class MinuteSummaries:
    """Columnar per-(series, minute) summaries: rollup rows or raw points summarised alike."""

    service: np.ndarray  # object array of str
    metric_type: np.ndarray  # object array of str
    minute: np.ndarray  # int64 epoch seconds (start of minute)
    count: np.ndarray
    sum: np.ndarray
    min: np.ndarray
    max: np.ndarray
    sketches: list[bytes]
    # Tier windows only: each row's PERCENTILES from its own sketch, stored when
    # the window is written (NaN where unknown), so a bucket that is exactly one
    # window needs no sketch merge.
    pct: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.minute)

    def records(self, minute: Callable[[int], Any]) -> list[tuple]:
        """(service, metric_type, minute(t), count, sum, min, max, sketch) rows for an INSERT."""
        return [
            (s, m, minute(int(t)), int(c), float(su), float(mn), float(mx), blob)
            for s, m, t, c, su, mn, mx, blob in zip(
                self.service.tolist(),
                self.metric_type.tolist(),
                self.minute.tolist(),
                self.count.tolist(),
                self.sum.tolist(),
                self.min.tolist(),
                self.max.tolist(),
                self.sketches,
                strict=True,
            )
        ]

    def take(self, idx: np.ndarray) -> MinuteSummaries:
        """The summaries at positions `idx`."""
        return MinuteSummaries(
            self.service[idx],
            self.metric_type[idx],
            self.minute[idx],
            self.count[idx],
            self.sum[idx],
            self.min[idx],
            self.max[idx],
            [self.sketches[i] for i in idx.tolist()],
            None if self.pct is None else self.pct[idx],
        )

    @classmethod
    def empty(cls) -> MinuteSummaries:
        o = np.array([], dtype=object)
        z = np.array([], dtype=np.float64)
        return cls(o, o, np.array([], dtype=np.int64), z, z, z, z, [])

    @classmethod
    def concat(cls, parts: Sequence[MinuteSummaries]) -> MinuteSummaries:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(
            np.concatenate([p.service for p in parts]),
            np.concatenate([p.metric_type for p in parts]),
            np.concatenate([p.minute for p in parts]),
            np.concatenate([p.count for p in parts]),
            np.concatenate([p.sum for p in parts]),
            np.concatenate([p.min for p in parts]),
            np.concatenate([p.max for p in parts]),
            [b for p in parts for b in p.sketches],
            None
            if all(p.pct is None for p in parts)
            else np.concatenate(
                [np.full((len(p), len(PERCENTILES)), np.nan) if p.pct is None else p.pct for p in parts]
            ),
        )


def fetch_raw(
    start: datetime, end: datetime, services: Sequence[str] | None, metric_types: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(service, metric_type, epoch seconds, value) of raw points in [start, end)."""
    where, params = series_where("timestamp", start, end, services, metric_types)
    sql = f"SELECT service, metric_type, {epoch_sql()}, value FROM metrics_point WHERE {where}"
    with connection.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    if not rows:
        e = np.array([], dtype=object)
        return e, e, np.array([], dtype=np.float64), np.array([], dtype=np.float64)
    svc, mt, ts, val = zip(*rows, strict=True)
    return (
        np.array(svc, dtype=object),
        np.array(mt, dtype=object),
        np.array(ts, dtype=np.float64),
        np.array(val, dtype=np.float64),
    )


def summarise(service: np.ndarray, metric_type: np.ndarray, ts: np.ndarray, value: np.ndarray) -> MinuteSummaries:
    """Group raw points by (series, minute) and build each group's summary and sketch, vectorised."""
    if not len(ts):
        return MinuteSummaries.empty()
    series_keys = np.char.add(np.char.add(service.astype(str), "|"), metric_type.astype(str))
    series_uniq, series_id = np.unique(series_keys, return_inverse=True)
    minute = (np.floor(ts / MINUTE) * MINUTE).astype(np.int64)
    minute_uniq, minute_id = np.unique(minute, return_inverse=True)
    group = series_id.astype(np.int64) * len(minute_uniq) + minute_id
    order = np.argsort(group, kind="stable")
    group_sorted = group[order]
    vals = value[order]
    starts = np.flatnonzero(np.r_[True, group_sorted[1:] != group_sorted[:-1]])
    gids = group_sorted[starts]
    counts = np.diff(np.r_[starts, len(vals)]).astype(np.float64)
    sums = np.add.reduceat(vals, starts)
    mins = np.minimum.reduceat(vals, starts)
    maxs = np.maximum.reduceat(vals, starts)
    # Sketches: count (group, bucket) pairs in one pass, then slice per group.
    idx = sketch.bucket_indices(vals).astype(np.int64)
    pair = group_sorted * 65536 + (idx + 32768)
    pair_uniq, pair_counts = np.unique(pair, return_counts=True)
    pair_group = pair_uniq // 65536
    rec = np.empty(len(pair_uniq), dtype=sketch.RECORD)
    rec["i"] = (pair_uniq % 65536) - 32768
    rec["c"] = pair_counts
    bounds = np.searchsorted(pair_group, gids, side="left")
    bounds_end = np.r_[bounds[1:], len(pair_uniq)]
    raw = rec.tobytes()
    size = sketch.RECORD.itemsize
    blobs = [raw[a * size : b * size] for a, b in zip(bounds.tolist(), bounds_end.tolist(), strict=True)]
    sid = gids // len(minute_uniq)
    mid = gids % len(minute_uniq)
    parts = np.array([k.split("|", 1) for k in series_uniq.tolist()], dtype=object).reshape(-1, 2)
    return MinuteSummaries(
        service=parts[sid, 0],
        metric_type=parts[sid, 1],
        minute=minute_uniq[mid],
        count=counts,
        sum=sums,
        min=mins,
        max=maxs,
        sketches=blobs,
    )


def series_where(
    column: str, start: datetime, end: datetime, services: Sequence[str] | None, metric_types: Sequence[str] | None
) -> tuple[str, list]:
    """WHERE clause (and params) for a time range of some services and metric types."""
    where = [f"{column} >= %s", f"{column} < %s"]
    params: list = [db_ts(start), db_ts(end)]
    if services:
        where.append(f"service IN ({','.join(['%s'] * len(services))})")
        params.extend(services)
    if metric_types:
        where.append(f"metric_type IN ({','.join(['%s'] * len(metric_types))})")
        params.extend(metric_types)
    return " AND ".join(where), params


def _fetch_summaries(
    table: str,
    start: datetime,
    end: datetime,
    services: Sequence[str] | None,
    metric_types: Sequence[str] | None,
    column: str = "minute",
    width: int | None = None,
) -> MinuteSummaries:
    """Rows of a summary table (rollups, sketch contributions, one tier's windows) as MinuteSummaries."""
    where, params = series_where(column, start, end, services, metric_types)
    stored = ""
    if width is not None:
        where += " AND width = %s"
        params.append(width)
        stored = ", p50, p95, p99"
    sql = f"SELECT service, metric_type, {epoch_sql(column)}, count, sum, min, max, sketch{stored} FROM {table} WHERE {where}"
    with connection.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    if not rows:
        return MinuteSummaries.empty()
    svc, mt, minute, cnt, sm, mn, mx, sk, *pct = zip(*rows, strict=True)
    return MinuteSummaries(
        np.array(svc, dtype=object),
        np.array(mt, dtype=object),
        np.rint(np.array(minute, dtype=np.float64)).astype(np.int64),
        np.array(cnt, dtype=np.float64),
        np.array(sm, dtype=np.float64),
        np.array(mn, dtype=np.float64),
        np.array(mx, dtype=np.float64),
        [bytes(b) for b in sk],
        np.array(pct, dtype=np.float64).T if pct else None,  # NULL (a window written before 0008) is NaN
    )


def fetch_rollups(
    start: datetime, end: datetime, services: Sequence[str] | None, metric_types: Sequence[str] | None
) -> MinuteSummaries:
    return _fetch_summaries("metrics_rollup", start, end, services, metric_types)


def _upsert(summaries: MinuteSummaries, width: int | None = None) -> int:
    """Write minute rollups, or (with `width`) that tier's windows, replacing the rows they recompute."""
    if not len(summaries):
        return 0
    columns_extra = set_extra = ""
    if width is None:
        table, columns, key = "metrics_rollup", "minute", "minute"
        params = summaries.records(_db_minute)
    else:
        table, columns, key = "metrics_coarserollup", "width, start", "width, start"
        params = tier_records(summaries, width, _db_minute)
        columns_extra, set_extra = ", p50, p95, p99", ", p50 = excluded.p50, p95 = excluded.p95, p99 = excluded.p99"
    placeholders = ", ".join(["%s"] * len(params[0]))
    sql = (
        f"INSERT INTO {connection.ops.quote_name(table)} "
        f"(service, metric_type, {columns}, count, sum, min, max, sketch{columns_extra}) "
        f"VALUES ({placeholders}) "
        f"ON CONFLICT (service, metric_type, {key}) DO UPDATE SET count = excluded.count, "
        f"sum = excluded.sum, min = excluded.min, max = excluded.max, sketch = excluded.sketch{set_extra}"
    )
    with connection.cursor() as cur:
        cur.executemany(sql, params)
    return len(params)


def window_percentiles(summaries: MinuteSummaries) -> np.ndarray:
    """Each row's PERCENTILES from its own sketch, clamped to its min and max: what a query merging that one row answers."""
    n = len(summaries)
    return sketch.grouped_quantiles(summaries.sketches, np.arange(n), n, PERCENTILES, summaries.min, summaries.max)


def tier_records(summaries: MinuteSummaries, width: int, minute: Callable[[int], Any]) -> list[tuple]:
    """INSERT rows of tier windows: the summary columns, then the stored percentiles (None for NaN)."""
    pct = [[None if x != x else x for x in row] for row in window_percentiles(summaries).tolist()]
    return [(s, m, width, *rest, *p) for (s, m, *rest), p in zip(summaries.records(minute), pct, strict=True)]


def _lock_state() -> RollupState:
    RollupState.objects.get_or_create(id=1)
    return RollupState.objects.select_for_update().get(id=1)


def _fingerprint(start: datetime, end: datetime) -> tuple[int, int]:
    """(count, max id) of raw points in [start, end): changes whenever a point lands there."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM metrics_point WHERE timestamp >= %s AND timestamp < %s",
            [db_ts(start), db_ts(end)],
        )
        count, max_id = cur.fetchone()
    return int(count), int(max_id)


def roll_up(now: datetime | None = None, chunk: timedelta = timedelta(minutes=10)) -> int:
    """Roll up every complete minute not yet rolled up. Returns the number of rollup rows written.

    Each chunk is computed outside the write lock (SQLite has a single writer,
    and ingestion must keep answering during a large roll-up), then written in
    a short locked transaction. If a point landed in the chunk meanwhile (the
    fingerprint changed), the chunk is recomputed under the lock, so a rollup
    never misses a committed point. The same transaction writes the tier
    windows the chunk completes; at the end, `backfill_tiers` takes one step.
    """
    now = now or datetime.now(UTC)
    target = floor_minute(now)
    written = 0
    while True:
        start = rolled_through()
        if start is None:
            with transaction.atomic():
                state = _lock_state()
                if state.rolled_through is None:
                    first = _first_point_time()
                    state.rolled_through = floor_minute(first) if first is not None else target
                    # Tier windows are built from here on, as they complete.
                    state.tiered_from = state.rolled_through
                    state.save(update_fields=["rolled_through", "tiered_from"])
            continue
        if start >= target:
            backfill_tiers()  # a database rolled up before the tiers: one more step back (else two reads)
            return written
        end = min(start + chunk, target)
        before = _fingerprint(start, end)
        summaries = summarise_window(start, end, None, None)
        with transaction.atomic():
            state = _lock_state()
            if state.rolled_through != start:
                continue  # another process advanced the boundary; start again from it
            if _fingerprint(start, end) != before:
                summaries = summarise_window(start, end, None, None)
            written += _upsert(summaries)
            # The tier windows this chunk completes, from the minutes just written and those before.
            build_tiers(completed_windows(start, end))
            state.rolled_through = end
            state.save(update_fields=["rolled_through"])


def _first_point_time() -> datetime | None:
    # MIN of the bare column is one seek in point_ts_idx; MIN of an expression
    # over it read every row, for seconds, inside roll_up's write transaction.
    with connection.cursor() as cur:
        cur.execute("SELECT MIN(timestamp) FROM metrics_point")
        row = cur.fetchone()
    value = None if row is None else row[0]
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # SQLite stores naive UTC
    return value


def rolled_through(for_share: bool = False) -> datetime | None:
    if for_share and connection.vendor == "postgresql":
        # FOR SHARE: concurrent ingests proceed together, but roll_up (FOR UPDATE)
        # waits for them, so it never advances past a minute whose points are
        # still uncommitted.
        with connection.cursor() as cur:
            cur.execute("SELECT rolled_through FROM metrics_rollupstate WHERE id = 1 FOR SHARE")
            row = cur.fetchone()
        return row[0] if row else None
    # Plain SQL: this runs inside every ingest, where the ORM's query compilation
    # was a third of a single-point request.
    with connection.cursor() as cur:
        cur.execute("SELECT rolled_through FROM metrics_rollupstate WHERE id = 1")
        row = cur.fetchone()
    value = row[0] if row else None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # SQLite stores naive UTC
    return value


def boundary_within(start: datetime, end: datetime) -> datetime:
    """Where [start, end) switches from rollup rows to raw points: the rolled-up boundary, clamped into the range."""
    return min(max(rolled_through() or start, start), end)


def refresh_late_minutes(rows: Iterable) -> int:
    """Recompute rollups of minutes that already had them when late points arrive."""
    boundary = rolled_through(for_share=True)
    if boundary is None:
        return 0
    late = {(r.service, r.metric_type, floor_minute(r.timestamp)) for r in rows if r.timestamp < boundary}
    if not late:
        return 0
    return recompute(late, boundary)


def recompute(series_minutes: Iterable[tuple[str, str, datetime]], boundary: datetime | None = None) -> int:
    """Rebuild the given (service, metric_type, minute) rollups from raw points, in one read.

    Then every complete tier window (ending by `boundary`, the rolled-up
    boundary) that holds one of those minutes is rebuilt from its minute rollups.
    """
    wanted = set(series_minutes)
    if not wanted:
        return 0
    written = _recompute_minutes(wanted)
    boundary = boundary if boundary is not None else rolled_through()
    if boundary is not None:
        windows = {
            width: {
                (s, m, _floor_epoch(t, width))
                for s, m, t in wanted
                if _floor_epoch(t, width) + width <= boundary.timestamp()
            }
            for width in TIERS
        }
        build_tiers(
            {w: (min(k[2] for k in keys), max(k[2] for k in keys) + w) for w, keys in windows.items() if keys},
            sorted({s for s, _, _ in wanted}),
            sorted({m for _, m, _ in wanted}),
            windows,
        )
    return written


def _recompute_minutes(wanted: set[tuple[str, str, datetime]]) -> int:
    services = sorted({s for s, _, _ in wanted})
    types = sorted({m for _, m, _ in wanted})
    lo = min(m for _, _, m in wanted)
    hi = max(m for _, _, m in wanted) + timedelta(minutes=1)
    summaries = summarise_window(lo, hi, services, types)
    keep = np.array(
        [
            (s, m, from_epoch(int(t))) in wanted
            for s, m, t in zip(
                summaries.service.tolist(), summaries.metric_type.tolist(), summaries.minute.tolist(), strict=True
            )
        ],
        dtype=bool,
    )
    if not keep.any():
        return 0
    return _upsert(summaries.take(np.flatnonzero(keep)))


# --- Pre-bucketed contributions (OTLP histograms) -------------------------------


def fetch_contributions(
    start: datetime, end: datetime, services: Sequence[str] | None, metric_types: Sequence[str] | None
) -> MinuteSummaries:
    """SketchContribution rows in [start, end) as minute summaries (several rows may share a minute)."""
    return _fetch_summaries("metrics_sketchcontribution", start, end, services, metric_types)


def merge_summaries(parts: Sequence[MinuteSummaries]) -> MinuteSummaries:
    """One summary per (service, metric_type, minute): counts and sums add, sketches merge."""
    merged = MinuteSummaries.concat([p for p in parts if len(p)])
    if not len(merged):
        return MinuteSummaries.empty()
    columns = zip(merged.service.tolist(), merged.metric_type.tolist(), merged.minute.tolist(), strict=True)
    keys = [f"{s}|{m}|{t}" for s, m, t in columns]
    uniq, first, group = np.unique(np.array(keys), return_index=True, return_inverse=True)
    if len(uniq) == len(merged):
        return merged
    n = len(uniq)
    mins = np.full(n, np.inf)
    np.minimum.at(mins, group, merged.min)
    maxs = np.full(n, -np.inf)
    np.maximum.at(maxs, group, merged.max)
    blobs: list[list[bytes]] = [[] for _ in range(n)]
    for g, blob in zip(group.tolist(), merged.sketches, strict=True):
        blobs[g].append(blob)
    return MinuteSummaries(
        merged.service[first],
        merged.metric_type[first],
        merged.minute[first],
        np.bincount(group, weights=merged.count, minlength=n),
        np.bincount(group, weights=merged.sum, minlength=n),
        mins,
        maxs,
        [b[0] if len(b) == 1 else sketch.merge(b) for b in blobs],
    )


def summarise_window(
    start: datetime, end: datetime, services: Sequence[str] | None, metric_types: Sequence[str] | None
) -> MinuteSummaries:
    """Minute summaries of raw points plus the pre-bucketed contributions of the same minutes."""
    raw = summarise(*fetch_raw(start, end, services, metric_types))
    extra = fetch_contributions(start, end, services, metric_types)
    return merge_summaries([raw, extra]) if len(extra) else raw


def insert_contributions(contributions: Sequence[MinuteSummaries]) -> int:
    """Store pre-bucketed observations (inside the caller's transaction)."""
    params = [row for part in contributions for row in part.records(_db_minute)]
    if not params:
        return 0
    table = connection.ops.quote_name("metrics_sketchcontribution")
    with connection.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {table} (service, metric_type, minute, count, sum, min, max, sketch) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            params,
        )
    return len(params)


# --- Coarser tiers ----------------------------------------------------------------

# Window widths (seconds) of the merged tiers, finest first. Each divides 3600,
# and every bucket of 5 minutes or more a query can ask for (query.NICE_BUCKETS,
# FIXED_BUCKETS) is a multiple of one of them: 24 h `auto` buckets are 5 minutes,
# 7 d ones 30 minutes.
TIERS = (300, 1800, 3600)
Spans = dict[int, tuple[int, int]]  # width -> [first window start, last window end), epoch seconds


def tier_for(bucket_seconds: int) -> int | None:
    """The widest tier whose windows tile buckets of this size; None when only minutes do."""
    fits = [width for width in TIERS if bucket_seconds % width == 0]
    return max(fits) if fits else None


def _floor_epoch(dt: datetime, width: int) -> int:
    return int(dt.timestamp()) // width * width


def _ceil_epoch(dt: datetime, width: int) -> int:
    whole, part = divmod(int(dt.timestamp()), width)
    return (whole + (1 if part or dt.microsecond else 0)) * width


def tier_span(width: int, start: datetime, end: datetime) -> tuple[datetime, datetime] | None:
    """The whole `width` windows inside [start, end) that a query may read from the tier, or None.

    They must also end by the rolled-up boundary (complete) and start at or
    after `tiered_from` (built): the caller clamps `end` to the boundary.
    """
    since = tiered_from()
    if since is None:
        return None
    lo = _ceil_epoch(max(start, since), width)
    hi = _floor_epoch(end, width)
    return (from_epoch(lo), from_epoch(hi)) if lo < hi else None


def completed_windows(start: datetime, end: datetime) -> Spans:
    """Per tier, the windows that end in (start, end]: those a roll-up from start to end completes."""
    spans = {}
    for width in TIERS:
        lo, hi = _floor_epoch(start, width), _floor_epoch(end, width)
        if lo < hi:
            spans[width] = (lo, hi)
    return spans


def merge_windows(summaries: MinuteSummaries, width: int) -> MinuteSummaries:
    """One summary per (series, `width`-second window): counts and sums add, min/max hold, sketches merge."""
    if not len(summaries):
        return MinuteSummaries.empty()
    window = summaries.minute // width * width
    columns = zip(summaries.service.tolist(), summaries.metric_type.tolist(), window.tolist(), strict=True)
    keys = np.array([f"{s}|{m}|{w}" for s, m, w in columns])
    uniq, first, group = np.unique(keys, return_index=True, return_inverse=True)
    n = len(uniq)
    mins = np.full(n, np.inf)
    np.minimum.at(mins, group, summaries.min)
    maxs = np.full(n, -np.inf)
    np.maximum.at(maxs, group, summaries.max)
    return MinuteSummaries(
        summaries.service[first],
        summaries.metric_type[first],
        window[first],
        np.bincount(group, weights=summaries.count, minlength=n),
        np.bincount(group, weights=summaries.sum, minlength=n),
        mins,
        maxs,
        sketch.merge_groups(summaries.sketches, group, n),
    )


def fetch_tier(
    width: int, start: datetime, end: datetime, services: Sequence[str] | None, metric_types: Sequence[str] | None
) -> MinuteSummaries:
    """The `width` windows that start in [start, end), as summaries whose `minute` is the window's start."""
    return _fetch_summaries("metrics_coarserollup", start, end, services, metric_types, column="start", width=width)


def build_tiers(
    spans: Spans,
    services: Sequence[str] | None = None,
    metric_types: Sequence[str] | None = None,
    only: dict[int, set[tuple[str, str, int]]] | None = None,
) -> int:
    """(Re)write each tier's windows in its span from the minute rollups, in one read; `only` narrows to some."""
    if not spans:
        return 0
    lo = min(a for a, _ in spans.values())
    hi = max(b for _, b in spans.values())
    minutes = fetch_rollups(from_epoch(lo), from_epoch(hi), services, metric_types)
    written = 0
    for width, (a, b) in spans.items():
        part = minutes.take(np.flatnonzero((minutes.minute >= a) & (minutes.minute < b)))
        windows = merge_windows(part, width)
        if only is not None:
            wanted = only.get(width, set())
            keys = zip(windows.service.tolist(), windows.metric_type.tolist(), windows.minute.tolist(), strict=True)
            windows = windows.take(np.flatnonzero([key in wanted for key in keys]))
        written += _upsert(windows, width)
    return written


def tiered_from() -> datetime | None:
    """Tier windows exist from here on (None: none yet); older ranges are read from the minutes."""
    with connection.cursor() as cur:
        cur.execute("SELECT tiered_from FROM metrics_rollupstate WHERE id = 1")
        row = cur.fetchone()
    return _aware(row[0] if row else None)


def _aware(value: Any) -> datetime | None:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # SQLite stores naive UTC
    return value


def backfill_tiers(span: timedelta = timedelta(hours=6)) -> int:
    """Build the tier windows of one more `span` of minutes before `tiered_from` (databases rolled up before tiers).

    One short locked transaction per call, like a roll-up chunk; once no
    minute rollup is older than `tiered_from` a call only reads two values.
    """
    since = tiered_from()
    first = _first_rollup_minute() if since is not None else None
    if since is None or first is None or since.timestamp() <= first:
        return 0
    top = max(TIERS)
    # The first step ends at `tiered_from` itself (windows that straddle it were built
    # when they completed); later steps start and end on whole hours.
    lo = max(_floor_epoch(since - span, top), first // top * top)
    with transaction.atomic():
        state = _lock_state()
        if state.tiered_from != since:
            return 0  # another process moved it meanwhile; the next pass goes on from there
        written = build_tiers({w: (lo, _floor_epoch(since, w)) for w in TIERS if lo < _floor_epoch(since, w)})
        state.tiered_from = from_epoch(lo)
        state.save(update_fields=["tiered_from"])
    return written


def _first_rollup_minute() -> int | None:
    with connection.cursor() as cur:
        # MIN of the bare column: one seek on rollup_minute_idx, not a conversion of every row.
        cur.execute(f"SELECT {epoch_sql('first')} FROM (SELECT MIN(minute) AS first FROM metrics_rollup) AS m")
        row = cur.fetchone()
    return None if row is None or row[0] is None else int(round(row[0]))
