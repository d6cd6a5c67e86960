"""Answers to /metrics/query and /metrics/services: raw points, exact buckets, merged sketches."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection
from orjson import Fragment

from metrics.errors import ValidationErrors, error_item
from metrics.kinds import METRIC_TYPES
from metrics.models import Alert, Service
from metrics.points import SERVICE_RE, iso, parse_timestamp, timestamp_problem
from metrics.series import rollups, sketch

AGGREGATIONS = ("raw", "1m", "5m", "1h", "auto")
FIXED_BUCKETS = {"1m": 60, "5m": 300, "1h": 3600}
# Bucket sizes `auto` may choose, smallest first; sub-minute sizes only on raw data.
NICE_BUCKETS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]
AUTO_TARGET_BUCKETS = 300
PERCENTILES = rollups.PERCENTILES
# Times a query can use: the range arithmetic (defaults, bucket edges, whole
# minutes) must stay inside what datetime can hold, and nothing is stored
# before the Unix epoch. Outside it is a 400 naming the field, never an OverflowError.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(9000, 1, 1, tzinfo=UTC)
# Stored timestamps have microsecond resolution, so [start, end + 1 us) is [start, end].
RESOLUTION = timedelta(microseconds=1)


@dataclass
class QuerySpec:
    start: datetime
    end: datetime
    services: list[str] | None
    metric_types: list[str] | None
    aggregation: str
    limit: int
    exact: bool


def _as_list(raw: Any, name: str, errors: list) -> list[str] | None:
    if raw is None or raw == "" or raw == []:
        return None
    if isinstance(raw, str):
        raw = [part for part in raw.split(",") if part]
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        errors.append(error_item(None, name, "expected an array of strings or null"))
        return None
    return raw


KNOWN_FIELDS = {"start_time", "end_time", "services", "metric_types", "aggregation", "limit", "exact"}


def parse_query(params: dict[str, Any], now: datetime | None = None) -> QuerySpec:
    """A query's parameters checked field by field; ValidationErrors naming every field at fault."""
    conf = settings.TELEMETRY
    now = now or datetime.now(UTC)
    errors: list[dict[str, Any]] = []
    for key in params:
        if key not in KNOWN_FIELDS:
            # An empty key still gets a field name clients can show.
            field_name = str(key)[:64] or "(empty key)"
            errors.append(
                error_item(None, field_name, f"unknown field; expected one of {', '.join(sorted(KNOWN_FIELDS))}")
            )
    end = _time(params, "end_time", errors) or now
    start = _time(params, "start_time", errors) or max(end - timedelta(hours=1), EARLIEST_TIME)
    services, metric_types = _series_filters(params, errors)
    aggregation = params.get("aggregation") or "raw"
    if aggregation not in AGGREGATIONS:
        errors.append(error_item(None, "aggregation", f"must be one of {', '.join(AGGREGATIONS)}"))
    limit = _limit(params.get("limit", conf["QUERY_DEFAULT_LIMIT"]), conf["QUERY_DEFAULT_LIMIT"], errors)
    exact_raw = params.get("exact", False)
    exact = exact_raw in (True, "true", "1", 1)
    if exact_raw not in (True, False, "true", "false", "1", "0", 1, 0, None, ""):
        errors.append(error_item(None, "exact", "must be a boolean"))
    if not errors:
        problem = _range_problem(start, end, aggregation, now)
        if problem is not None:
            errors.append(problem)
    if errors:
        raise ValidationErrors("Invalid query", errors)
    return QuerySpec(start, end, services, metric_types, aggregation, limit, exact)


def _time(params: dict[str, Any], name: str, errors: list[dict[str, Any]]) -> datetime | None:
    raw = params.get(name)
    if raw in (None, ""):
        return None
    try:
        when = parse_timestamp(raw)
    except (ValueError, OverflowError, OSError) as exc:
        errors.append(error_item(None, name, timestamp_problem(exc)))
        return None
    if not EARLIEST_TIME <= when < LATEST_TIME:
        errors.append(
            error_item(None, name, f"out of range: must be from {iso(EARLIEST_TIME)} to before {iso(LATEST_TIME)}")
        )
        return None
    return when


def _series_filters(params: dict[str, Any], errors: list[dict[str, Any]]) -> tuple[list[str] | None, list[str] | None]:
    services = _as_list(params.get("services"), "services", errors)
    if services:
        bad = [s for s in services if not SERVICE_RE.fullmatch(s)]
        if bad:
            errors.append(error_item(None, "services", f"invalid service name {bad[0][:64]!r}"))
    metric_types = _as_list(params.get("metric_types"), "metric_types", errors)
    if metric_types:
        bad = [m for m in metric_types if m not in METRIC_TYPES]
        if bad:
            errors.append(
                error_item(
                    None, "metric_types", f"unknown metric type {bad[0][:32]!r}; expected {', '.join(METRIC_TYPES)}"
                )
            )
    return services, metric_types


def _limit(raw: Any, default: int, errors: list[dict[str, Any]]) -> int:
    try:
        if isinstance(raw, bool | float):
            raise ValueError
        limit = int(raw)
        if limit < 1 or limit > 100_000:
            raise ValueError
    except (TypeError, ValueError):
        errors.append(error_item(None, "limit", "must be an integer between 1 and 100000"))
        return default
    return limit


def _range_problem(start: datetime, end: datetime, aggregation: str, now: datetime) -> dict[str, Any] | None:
    """What is wrong with [start, end] for this aggregation and the retention, if anything."""
    conf = settings.TELEMETRY
    retention = timedelta(days=conf["ROLLUP_RETENTION_DAYS"])
    if end < start:
        return error_item(None, "end_time", "must not be before start_time")
    if end == start and aggregation != "raw":
        # Buckets cover [start, end): an empty range has none. Raw points include their end.
        return error_item(None, "end_time", "must be after start_time for a bucketed aggregation")
    if end - start > retention:
        return error_item(None, "start_time", f"the range may span at most {conf['ROLLUP_RETENTION_DAYS']} days")
    if start < now - retention - timedelta(minutes=1):
        return error_item(None, "start_time", f"older than the rollup retention ({conf['ROLLUP_RETENTION_DAYS']} days)")
    if aggregation == "raw" and start < now - timedelta(hours=conf["RAW_RETENTION_HOURS"]):
        return error_item(
            None, "start_time", f"raw points are kept {conf['RAW_RETENTION_HOURS']:g} h; use a bucketed aggregation"
        )
    return None


def bucket_seconds(spec: QuerySpec, use_raw: bool) -> int:
    if spec.aggregation in FIXED_BUCKETS:
        return FIXED_BUCKETS[spec.aggregation]
    # The nice size whose bucket count is nearest (by ratio) to the target.
    span = max((spec.end - spec.start).total_seconds(), 1.0)
    sizes = [size for size in NICE_BUCKETS if use_raw or size >= 60]
    return min(sizes, key=lambda size: abs(math.log(span / size / AUTO_TARGET_BUCKETS)))


def plan(spec: QuerySpec, now: datetime) -> tuple[bool, int]:
    """(read raw points?, bucket seconds) of a bucketed query: raw while the range is in raw retention and short."""
    conf = settings.TELEMETRY
    raw_floor = now - timedelta(hours=conf["RAW_RETENTION_HOURS"])
    short = (spec.end - spec.start).total_seconds() <= conf["QUERY_RAW_MAX_SECONDS"]
    use_raw = spec.start >= raw_floor and (short or spec.exact)
    return use_raw, bucket_seconds(spec, use_raw)


def run(spec: QuerySpec, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    if spec.aggregation == "raw":
        return raw_points(spec)
    use_raw, size = plan(spec, now)
    if use_raw:
        data = exact_buckets(spec, size)
        source = "raw"
    else:
        data = sketch_buckets(spec, size)
        source = "rollup"
    return {
        "data": data,
        "source": source,
        "aggregation": spec.aggregation,
        "bucket_seconds": size,
        "start_time": iso(spec.start),
        "end_time": iso(spec.end),
    }


def _tags(stored: Any) -> Any:
    # Django reads jsonb as text on PostgreSQL too: embed it, do not decode it.
    if isinstance(stored, str):
        return Fragment(stored or "{}")
    return stored or {}


def raw_points(spec: QuerySpec) -> dict[str, Any]:
    """Raw points, oldest first, in one SQL read with no per-row model or JSON work.

    The ORM spent ~30 us a row parsing timestamps and decoding tags only to
    encode them again; here SQLite's stored text becomes the wire spelling by
    slicing, and stored tags JSON is embedded as it is (orjson.Fragment).
    """
    # Raw reads include their end, as Prometheus' range queries do: a point
    # ingested at T is in a query that ends at T.
    where, params = rollups.series_where(
        "timestamp", spec.start, spec.end + RESOLUTION, spec.services, spec.metric_types
    )
    sqlite = connection.vendor == "sqlite"
    # CAST: an expression has no declared type, so the driver's datetime converter is skipped.
    ts_column = "CAST(timestamp AS TEXT)" if sqlite else "timestamp"
    sql = (
        f"SELECT {ts_column}, service, metric_type, value, tags FROM metrics_point "
        f"WHERE {where} ORDER BY timestamp, id LIMIT {int(spec.limit) + 1}"
    )
    with connection.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    truncated = len(rows) > spec.limit
    rows = rows[: spec.limit]
    if sqlite:
        # Stored as naive UTC "YYYY-MM-DD HH:MM:SS[.ffffff]": iso() of it is the same text with T and Z.
        data = [
            {
                "timestamp": f"{t[:10]}T{t[11:]}Z",
                "service": s,
                "metric_type": m,
                "value": v,
                "tags": Fragment(tags or "{}"),
            }
            for t, s, m, v, tags in rows
        ]
    else:
        data = [
            {"timestamp": iso(t), "service": s, "metric_type": m, "value": v, "tags": _tags(tags)}
            for t, s, m, v, tags in rows
        ]
    return {"data": data, "source": "raw", "aggregation": "raw", "truncated": truncated}


def _bucket_groups(
    service: np.ndarray, metric_type: np.ndarray, when: np.ndarray, size: int
) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
    """Group id per row for (bucket, service, metric_type), and each group's key, in output order."""
    bucket = (np.floor(when / size) * size).astype(np.int64)
    # A handful of series: number them with a dict (numpy string ops on 50 k
    # object rows cost more than the rest of the grouping), then order the
    # numbers by the same "service|metric_type" key as before.
    first_seen: dict[tuple[str, str], int] = {}
    raw_id = np.fromiter(
        (
            first_seen.setdefault(pair, len(first_seen))
            for pair in zip(service.tolist(), metric_type.tolist(), strict=True)
        ),
        dtype=np.int64,
        count=len(service),
    )
    pairs = sorted(first_seen, key=lambda pair: f"{pair[0]}|{pair[1]}")
    rank = np.empty(len(pairs), dtype=np.int64)
    for position, pair in enumerate(pairs):
        rank[first_seen[pair]] = position
    series_id = rank[raw_id] if len(raw_id) else raw_id
    n_series = len(pairs)
    bucket_uniq, bucket_id = np.unique(bucket, return_inverse=True)
    combined = bucket_id.astype(np.int64) * n_series + series_id
    group_uniq, group_id = np.unique(combined, return_inverse=True)
    out_keys = [
        (int(bucket_uniq[g // n_series]), pairs[g % n_series][0], pairs[g % n_series][1]) for g in group_uniq.tolist()
    ]
    return group_id, out_keys


@dataclass
class Figures:
    """Per group: percentiles (n, len(PERCENTILES)), min, max, sum and count."""

    pct: np.ndarray
    mins: np.ndarray
    maxs: np.ndarray
    sums: np.ndarray
    counts: np.ndarray

    def rows(self, keys: list[tuple[int, str, str]]) -> list[dict[str, Any]]:
        """The answer row of each group, keyed (bucket start, service, metric_type); NaN is null.

        Whole columns are converted at once and each bucket's timestamp spelled
        once: per-row numpy indexing was most of a 1,500-bucket answer.
        """
        counts = self.counts.tolist()
        with np.errstate(divide="ignore", invalid="ignore"):
            avg = _nullable(np.where(self.counts > 0, self.sums / self.counts, np.nan))
        p50, p95, p99 = (_nullable(self.pct[:, i]) for i in range(len(PERCENTILES)))
        mins, maxs = _nullable(self.mins), _nullable(self.maxs)
        stamps: dict[int, str] = {}
        out = []
        for g, (start, service, metric_type) in enumerate(keys):
            stamp = stamps.get(start)
            if stamp is None:
                stamp = stamps[start] = iso(rollups.from_epoch(start))  # type: ignore[assignment]
            out.append(
                {
                    "timestamp": stamp,
                    "service": service,
                    "metric_type": metric_type,
                    "p50": p50[g],
                    "p95": p95[g],
                    "p99": p99[g],
                    "min": mins[g],
                    "max": maxs[g],
                    "avg": avg[g],
                    "count": int(counts[g]),
                }
            )
        return out


def _nullable(column: np.ndarray) -> list[float | None]:
    return [None if x != x else x for x in np.asarray(column, dtype=np.float64).tolist()]


def exact_figures(value: np.ndarray, group_id: np.ndarray, n_groups: int) -> Figures:
    """Exact figures of raw values per group, with numpy's default (linear) percentile interpolation."""
    # Sort by (group, value) once; each group's percentiles are then positions in its slice.
    order = np.lexsort((value, group_id))
    sorted_vals = value[order]
    counts = np.bincount(group_id, minlength=n_groups)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    pct = np.empty((n_groups, len(PERCENTILES)))
    for qi, q in enumerate(PERCENTILES):
        pos = q * (counts - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, counts - 1)
        frac = pos - lo
        pct[:, qi] = sorted_vals[starts + lo] * (1 - frac) + sorted_vals[starts + hi] * frac
    sums = np.bincount(group_id, weights=value, minlength=n_groups)
    return Figures(pct, sorted_vals[starts], sorted_vals[starts + counts - 1], sums, counts)


def sketch_figures(summaries: rollups.MinuteSummaries, group_id: np.ndarray, n_groups: int) -> Figures:
    """Figures of merged minute summaries per group: percentiles from the merged sketches (1 % relative error)."""
    counts = np.bincount(group_id, weights=summaries.count, minlength=n_groups)
    sums = np.bincount(group_id, weights=summaries.sum, minlength=n_groups)
    mins = np.full(n_groups, np.inf)
    np.minimum.at(mins, group_id, summaries.min)
    maxs = np.full(n_groups, -np.inf)
    np.maximum.at(maxs, group_id, summaries.max)
    if summaries.pct is None:
        pct = sketch.grouped_quantiles(summaries.sketches, group_id, n_groups, PERCENTILES, mins, maxs)
        return Figures(pct, mins, maxs, sums, counts)
    # A group that is one tier window with stored percentiles answers them
    # (computed from the same sketch, min and max when the window was written);
    # the other groups merge their sketches.
    alone = (np.bincount(group_id, minlength=n_groups)[group_id] == 1) & ~np.isnan(summaries.pct).any(axis=1)
    merge = np.flatnonzero(~alone)
    blobs = [summaries.sketches[i] for i in merge.tolist()]
    pct = sketch.grouped_quantiles(blobs, group_id[merge], n_groups, PERCENTILES, mins, maxs)
    pct[group_id[alone]] = summaries.pct[alone]
    return Figures(pct, mins, maxs, sums, counts)


def exact_buckets(spec: QuerySpec, size: int) -> list[dict[str, Any]]:
    service, metric_type, when, value = rollups.fetch_raw(spec.start, spec.end, spec.services, spec.metric_types)
    if not len(when):
        return []
    group_id, keys = _bucket_groups(service, metric_type, when, size)
    figures = exact_figures(value, group_id, len(keys))
    return figures.rows(keys)


def minute_summaries(spec: QuerySpec, start: datetime, end: datetime, size: int = 60) -> rollups.MinuteSummaries:
    """Summaries for [start, end) to group into `size`-second buckets: rollups before the rolled-up boundary, raw points after it.

    Where buckets are whole windows of a tier (rollups.tier_for), the tier's
    windows stand for their minutes, which they merge exactly (counts, min,
    max, sketch bucket counts; sums up to float rounding), so the buckets are
    the ones the minutes give; the minutes are read only at the edges.
    """
    boundary = rollups.boundary_within(start, end)
    width = rollups.tier_for(size)
    span = rollups.tier_span(width, start, boundary) if width is not None and start < boundary else None
    parts = []
    if width is not None and span is not None:
        tier_start, tier_end = span
        if start < tier_start:
            parts.append(rollups.fetch_rollups(start, tier_start, spec.services, spec.metric_types))
        parts.append(rollups.fetch_tier(width, tier_start, tier_end, spec.services, spec.metric_types))
        if tier_end < boundary:
            parts.append(rollups.fetch_rollups(tier_end, boundary, spec.services, spec.metric_types))
    elif start < boundary:
        parts.append(rollups.fetch_rollups(start, boundary, spec.services, spec.metric_types))
    if boundary < end:
        parts.append(rollups.summarise_window(boundary, end, spec.services, spec.metric_types))
    return rollups.MinuteSummaries.concat(parts)


def sketch_buckets(spec: QuerySpec, size: int) -> list[dict[str, Any]]:
    # Whole minutes only: a rollup cannot be split, so the range widens to them.
    summaries = minute_summaries(spec, rollups.floor_minute(spec.start), spec.end, size)
    if not len(summaries):
        return []
    group_id, keys = _bucket_groups(summaries.service, summaries.metric_type, summaries.minute.astype(np.float64), size)
    figures = sketch_figures(summaries, group_id, len(keys))
    return figures.rows(keys)


@dataclass
class Pooled:
    """Percentiles per time bucket of every series in a spec taken together (the dashboard's percentile charts)."""

    source: str  # "raw" or "rollup", chosen as run() chooses
    bucket_seconds: int
    current: datetime  # start of the bucket in progress, which is left out
    starts: np.ndarray  # epoch seconds of each complete bucket
    pct: np.ndarray  # (buckets, len(PERCENTILES))
    counts: np.ndarray


def pooled_percentiles(spec: QuerySpec, now: datetime) -> Pooled:
    """Complete buckets of [spec.start, the bucket in progress), all series pooled, from the source run() would use."""
    use_raw, size = plan(spec, now)
    current = datetime.fromtimestamp((int(spec.end.timestamp()) // size) * size, tz=spec.end.tzinfo)
    source = "raw" if use_raw else "rollup"
    if use_raw:
        _, _, when, value = rollups.fetch_raw(spec.start, current, spec.services, spec.metric_types)
        if not len(when):
            return Pooled(source, size, current, np.array([], dtype=np.int64), np.empty((0, 3)), np.array([]))
        group_id, starts = _pooled_groups(when, size)
        figures = exact_figures(value, group_id, len(starts))
    else:
        summaries = minute_summaries(spec, rollups.floor_minute(spec.start), current, size)
        if not len(summaries):
            return Pooled(source, size, current, np.array([], dtype=np.int64), np.empty((0, 3)), np.array([]))
        group_id, starts = _pooled_groups(summaries.minute.astype(np.float64), size)
        figures = sketch_figures(summaries, group_id, len(starts))
    return Pooled(source, size, current, starts, figures.pct, figures.counts)


def _pooled_groups(when: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Group id per row by time bucket only, and each bucket's start."""
    bucket = (np.floor(when / size) * size).astype(np.int64)
    starts, group_id = np.unique(bucket, return_inverse=True)
    return group_id, starts


# --- /metrics/services ----------------------------------------------------------


def services_overview(now: datetime | None = None, window_seconds: int | None = None) -> list[dict[str, Any]]:
    now = now or datetime.now(UTC)
    window = window_seconds or settings.TELEMETRY["SERVICE_WINDOW_SECONDS"]
    start = now - timedelta(seconds=window)
    service, metric_type, when, value = rollups.fetch_raw(start, now + timedelta(seconds=1), None, None)
    stats: dict[str, dict[str, dict[str, float | None]]] = {}
    if len(when):
        group_id, keys = _bucket_groups(service, metric_type, np.zeros_like(when), 10**9)
        for g, (_, svc, mt) in enumerate(keys):
            mask = group_id == g
            vals = value[mask]
            latest = vals[np.argmax(when[mask])]
            p50, p95, p99 = np.percentile(vals, [50, 95, 99])
            stats.setdefault(svc, {})[mt] = {
                "current": float(latest),
                "avg": float(vals.mean()),
                "p50": float(p50),
                "p95": float(p95),
                "p99": float(p99),
                "min": float(vals.min()),
                "max": float(vals.max()),
                "count": int(len(vals)),
            }
    firing: dict[str, str] = {}
    for svc, severity in Alert.objects.firing().values_list("service", "severity"):
        if severity == Alert.CRITICAL or svc not in firing:
            firing[svc] = severity
    out = []
    for known in Service.objects.order_by("name"):
        metrics = stats.get(known.name, {})
        if not metrics:
            status = "stale"
        elif firing.get(known.name) == Alert.CRITICAL:
            status = "unhealthy"
        elif firing.get(known.name) == Alert.WARNING:
            status = "degraded"
        else:
            status = "healthy"
        out.append({"service": known.name, "status": status, "last_seen": iso(known.last_seen), "metrics": metrics})
    return out
