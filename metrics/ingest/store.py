"""Store a validated batch: one transaction, multi-row inserts (COPY on PostgreSQL), alerts, late rollups.

Every ingestion path (JSON API, OTLP, the demo generator in process) ends here,
so alerts, rollup corrections and broadcasts behave the same for all of them.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import sqlite3
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.urls import NoReverseMatch, reverse

from metrics import stats
from metrics.alerts.rules import evaluate
from metrics.errors import ValidationErrors, error_item
from metrics.models import Alert
from metrics.points import PointDict, Row, iso
from metrics.series import rollups


@dataclass
class IngestResult:
    accepted: int
    points: list[PointDict] = field(default_factory=list)
    breached: list[Alert] = field(default_factory=list)
    changed: list[Alert] = field(default_factory=list)


class CardinalityError(ValidationErrors):
    pass


# How long this process trusts that a series or service row it wrote still
# exists. Retention and the admin delete rows, possibly from another process,
# so nothing is trusted for good: once this passes, the next point upserts its
# Series row again (idempotent), which also moves Series.last_seen forward.
# Retention leaves a margin well above this before deleting (see retention.py).
TRUST = timedelta(seconds=60)


class _SeriesCache:
    """Series and services this process has recently written, so most requests skip the guard's queries."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # key -> (trusted until, a point later than this moves last_seen)
        self.series: dict[tuple[str, str, str], tuple[datetime, datetime]] = {}
        self.services: dict[str, datetime] = {}  # name -> trusted until

    def clear(self) -> None:
        with self.lock:
            self.series.clear()
            self.services.clear()


known = _SeriesCache()


def tags_hash(tags: dict) -> str:
    if not tags:
        return ""
    return hashlib.sha1(orjson.dumps(tags, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _table(name: str) -> str:
    return connection.ops.quote_name(name)


def room_hint() -> str:
    """How to free room under the caps: said by every 429 of the guard."""
    conf = settings.TELEMETRY
    try:
        series_url = reverse("admin:metrics_series_changelist")
        services_url = reverse("admin:metrics_service_changelist")
    except NoReverseMatch:
        series_url, services_url = "the admin's Series page", "the admin's Services page"
    return (
        f"To free room, delete unused series ({series_url}) or services ({services_url}) in the admin, "
        f"or wait: retention removes a series once its raw points (RAW_RETENTION_HOURS, "
        f"{conf['RAW_RETENTION_HOURS']:g} h) and rollups (ROLLUP_RETENTION_DAYS, {conf['ROLLUP_RETENTION_DAYS']} d) "
        "have expired, and a service once it has no series left"
    )


def _guard_cardinality(series: dict[tuple[str, str, str], list[Any]], now: datetime) -> None:
    """Refuse a request that would create more series or services than allowed; upsert the Series rows."""
    conf = settings.TELEMETRY
    # Keys whose row must be written: not trusted, trust expired, or a point
    # a minute past the last_seen written. Value: [first, last, tags].
    trusted = known.series.get
    due: dict[tuple[str, str, str], list[Any]] = {}
    for key, span in series.items():
        entry = trusted(key)
        if entry is None or not now < entry[0] or span[1] > entry[1]:
            due[key] = span
    if not due:
        return
    new_services = {s for s, _, _ in due}
    new_services = {s for s in new_services if not now < known.services.get(s, now)}
    with connection.cursor() as cur:
        if new_services:
            cur.execute(
                f"SELECT name FROM {_table('metrics_service')} WHERE name IN ({','.join(['%s'] * len(new_services))})",
                list(new_services),
            )
            existing = {r[0] for r in cur.fetchall()}
            missing = new_services - existing
            if missing:
                cur.execute(f"SELECT COUNT(*) FROM {_table('metrics_service')}")
                total = cur.fetchone()[0]
                if total + len(missing) > conf["MAX_SERVICES"]:
                    stats.rejected_cardinality.inc()
                    raise CardinalityError(
                        f"Service limit reached: {total} services exist, the cap is {conf['MAX_SERVICES']}. "
                        f"{room_hint()}.",
                        [
                            error_item(
                                None, "service", f"would create {len(missing)} new service(s) beyond MAX_SERVICES"
                            )
                        ],
                        status=429,
                    )
        per_service: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        for key in due:
            per_service[key[0]].append(key)
        table = _table("metrics_series")
        # Sorted, so two instances upserting the same series take row locks
        # in the same order (no deadlock on PostgreSQL).
        for service, keys in sorted(per_service.items()):
            cur.execute(f"SELECT metric_type, tags_hash FROM {table} WHERE service = %s", [service])
            existing_series = {(service, m, h) for m, h in cur.fetchall()}
            missing_keys = [k for k in keys if k not in existing_series]
            if missing_keys and len(existing_series) + len(missing_keys) > conf["MAX_SERIES_PER_SERVICE"]:
                stats.rejected_cardinality.inc()
                raise CardinalityError(
                    f"Series limit reached for service {service!r}: {len(existing_series)} series exist, "
                    f"the cap is {conf['MAX_SERIES_PER_SERVICE']}; reduce distinct tag combinations. {room_hint()}.",
                    [error_item(None, "tags", "too many distinct (metric_type, tags) combinations for this service")],
                    status=429,
                )
            # A row deleted by retention or the admin since this process last
            # wrote it is simply inserted again.
            cur.executemany(
                f"INSERT INTO {table} (service, metric_type, tags_hash, tags, first_seen, last_seen) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (service, metric_type, tags_hash) DO UPDATE SET "
                f"last_seen = CASE WHEN {table}.last_seen IS NULL OR excluded.last_seen > {table}.last_seen "
                f"THEN excluded.last_seen ELSE {table}.last_seen END, "
                f"tags = COALESCE({table}.tags, excluded.tags)",
                [
                    (s, m, h, orjson.dumps(due[s, m, h][2] or {}).decode(), rollups.db_ts(first), rollups.db_ts(last))
                    for s, m, h in sorted(keys)
                    for first, last in [due[s, m, h][:2]]
                ],
            )
    # Trust only once committed: a series remembered from a rolled-back
    # request would never get its Series row, and the cap would undercount.
    until = now + TRUST
    remembered = {key: (until, span[1] + TRUST) for key, span in due.items()}
    transaction.on_commit(lambda: _remember(remembered, until))


def _remember(series: dict[tuple[str, str, str], tuple[datetime, datetime]], until: datetime) -> None:
    with known.lock:
        known.series.update(series)
        known.services.update(dict.fromkeys((s for s, _, _ in series), until))


@dataclass
class Digest:
    """What store() derives from a batch's rows alone, in one pass and without the database.

    submit.prepare makes it before the request is queued, so the writer
    thread, which every request waits behind, spends its time on SQL.
    """

    params: list[tuple[Any, ...]]  # the INSERT's rows, timestamps in the database's spelling
    series: dict[tuple[str, str, str], list[Any]]  # (service, metric_type, tags_hash) -> [first, last, tags]
    services: dict[str, list[datetime]]  # name -> [first, last]
    points: list[PointDict]  # the rows on the wire, for the announcement after COMMIT


def digest(rows: list[Row]) -> Digest:
    dumps = orjson.dumps
    # `connection.vendor` is a class attribute: reading it opens no connection.
    db_text = connection.vendor == "sqlite"
    params: list[tuple[Any, ...]] = []
    series: dict[tuple[str, str, str], list[Any]] = {}
    points: list[PointDict] = []
    known_tags: dict[bytes, tuple[str, str]] = {}  # tags JSON as sent -> (tags_hash, text): equal JSON, equal tags
    stamps: dict[datetime, tuple[Any, str]] = {}  # timestamp -> (database spelling, wire spelling)
    add_param, add_point = params.append, points.append
    for ts, service, metric_type, value, tags in rows:
        raw = dumps(tags)
        tags_key = known_tags.get(raw)
        if tags_key is None:
            tags_key = known_tags[raw] = (tags_hash(tags), raw.decode())
        spelled = stamps.get(ts)
        if spelled is None:
            spelled = stamps[ts] = (rollups.db_ts(ts) if db_text else ts, iso(ts) or "")
        add_param((spelled[0], service, metric_type, value, tags_key[1]))
        add_point(
            {"timestamp": spelled[1], "service": service, "metric_type": metric_type, "value": value, "tags": tags}
        )
        key = (service, metric_type, tags_key[0])
        span = series.get(key)
        if span is None:
            series[key] = [ts, ts, tags]
        elif ts < span[0]:
            span[0] = ts
        elif ts > span[1]:
            span[1] = ts
    services: dict[str, list[datetime]] = {}
    for (service, _, _), (first, last, _) in series.items():
        seen = services.get(service)
        if seen is None:
            services[service] = [first, last]
        else:
            seen[0], seen[1] = min(seen[0], first), max(seen[1], last)
    return Digest(params, series, services, points)


@functools.lru_cache(maxsize=32)
def _values_sql(table: str, rows: int) -> str:
    return f"INSERT INTO {table} (timestamp, service, metric_type, value, tags) VALUES " + ",".join(
        ["(?,?,?,?,?)"] * rows
    )


# Rows per INSERT statement on SQLite (5 parameters each), when the build allows that many.
SQLITE_ROWS_PER_INSERT = 1000


def statement_sizes(rows: int, most: int) -> list[int]:
    """Rows per statement: full statements of `most`, the rest in powers of two.

    A connection then prepares at most a dozen distinct INSERTs, whatever the
    batch sizes, and sqlite3's statement cache keeps them all: preparing a
    1,000-row INSERT costs more than running it.
    """
    rest = rows % most
    return [most] * (rows // most) + [1 << k for k in reversed(range(rest.bit_length())) if rest >> k & 1]


def _insert_points(params: list[tuple[Any, ...]]) -> None:
    table = _table("metrics_point")
    with connection.cursor() as cur:
        if connection.vendor == "postgresql" and len(params) > 1:
            # COPY streams the whole batch in one round trip: PostgreSQL's
            # fastest bulk path, same rows and same transaction as the INSERT.
            # On the driver's cursor, so its errors are made Django's here.
            copy_sql = f"COPY {table} (timestamp, service, metric_type, value, tags) FROM STDIN"
            with connection.wrap_database_errors, cur.cursor.copy(copy_sql) as copy:
                for row in params:
                    copy.write_row(row)
            return
        if connection.vendor == "sqlite":
            # Multi-row VALUES, a statement per up to 1,000 rows instead of a step
            # per row: executemany releases and retakes the GIL around every row,
            # and in the server each retake waits for the event loop or the next
            # request's validation (up to the switch interval). Straight to the
            # sqlite3 connection: Django's %s -> ? rewrite is a regex over the
            # whole statement (0.3 ms per 200 rows); wrap_database_errors still
            # turns failures into Django's exceptions, as its cursor does.
            raw = connection.connection
            most = min(SQLITE_ROWS_PER_INSERT, raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 5)
            start = 0
            with connection.wrap_database_errors:
                for size in statement_sizes(len(params), most):
                    chunk = params[start : start + size]
                    raw.execute(_values_sql(table, size), list(itertools.chain.from_iterable(chunk)))
                    start += size
            return
        cur.executemany(
            f"INSERT INTO {table} (timestamp, service, metric_type, value, tags) VALUES (%s, %s, %s, %s, %s)", params
        )


def lock_services(names: list[str]) -> None:
    """Lock these services' rows in name order (PostgreSQL; SQLite has one write lock anyway).

    The writer calls it first in each group with every service its jobs will
    touch: each job's store() sorts its own, but a group runs its jobs in
    arrival order, so two processes' groups took the same rows in opposite
    orders (figure 14: 18 deadlocks in 10 s, each a second of deadlock_timeout).
    NO KEY UPDATE is the lock the jobs' own upserts take. A service with no
    row yet locks nothing here; its first insert still decides the order.
    """
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT 1 FROM {_table('metrics_service')} WHERE name = ANY(%s) ORDER BY name FOR NO KEY UPDATE", [names]
        )


def _touch_services(services: dict[str, list[datetime]]) -> None:
    if not services:
        return
    greatest = "MAX" if connection.vendor == "sqlite" else "GREATEST"
    least = "MIN" if connection.vendor == "sqlite" else "LEAST"
    table = _table("metrics_service")
    # One statement for all of the batch's services (a few), in name order.
    sql = (
        f"INSERT INTO {table} (name, first_seen, last_seen, series_count) VALUES "
        + ", ".join(["(%s, %s, %s, 0)"] * len(services))
        + f" ON CONFLICT (name) DO UPDATE SET last_seen = {greatest}({table}.last_seen, excluded.last_seen), "
        f"first_seen = {least}({table}.first_seen, excluded.first_seen)"
    )
    params = [v for name, (lo, hi) in sorted(services.items()) for v in (name, rollups.db_ts(lo), rollups.db_ts(hi))]
    with connection.cursor() as cur:
        cur.execute(sql, params)


def store(
    rows: list[Row],
    now: datetime | None = None,
    contributions: list[rollups.MinuteSummaries] | None = None,
    digested: Digest | None = None,
) -> IngestResult:
    """Commit rows and their alert effects atomically; broadcast after commit.

    `contributions` are pre-bucketed observations (OTLP histogram buckets) for
    the rollups of the same minutes, stored in the same transaction.
    `digested` is digest(rows), when the caller made it before queueing.
    """
    now = now or datetime.now(UTC)
    batch = digested or digest(rows)
    with transaction.atomic():
        _guard_cardinality(batch.series, now)
        _insert_points(batch.params)
        _touch_services(batch.services)
        if contributions:
            rollups.insert_contributions(contributions)
        rollups.refresh_late_minutes(rows)
        outcome = evaluate(rows)
    stats.points_ingested.inc(len(rows))
    return IngestResult(accepted=len(rows), points=batch.points, breached=outcome.breached, changed=outcome.changed)
