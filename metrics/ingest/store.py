"""Store a validated batch: one transaction, executemany inserts, alerts, late rollups.

Every ingestion path (JSON API, OTLP, the demo generator in process) ends here,
so alerts, rollup corrections and broadcasts behave the same for all of them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import defaultdict
from collections.abc import Callable
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


def _guard_cardinality(rows: list[Row], now: datetime) -> None:
    """Refuse a request that would create more series or services than allowed; upsert the Series rows."""
    conf = settings.TELEMETRY
    # Keys whose row must be written: not trusted, trust expired, or a point
    # a minute past the last_seen written. Value: [first, last, tags].
    due: dict[tuple[str, str, str], list[Any]] = {}
    trusted = known.series.get
    for row in rows:
        key = (row.service, row.metric_type, tags_hash(row.tags))
        entry = trusted(key)
        if entry is not None and now < entry[0] and row.timestamp <= entry[1]:
            continue
        span = due.get(key)
        if span is None:
            due[key] = [row.timestamp, row.timestamp, row.tags]
        elif row.timestamp < span[0]:
            span[0] = row.timestamp
        elif row.timestamp > span[1]:
            span[1] = row.timestamp
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


def _memo(convert: Callable[[datetime], Any]) -> Callable[[datetime], Any]:
    """`convert` once per distinct timestamp: a batch shares a few (often just "now")."""
    memo: dict[datetime, Any] = {}

    def cached(dt: datetime) -> Any:
        try:
            return memo[dt]
        except KeyError:
            value = memo[dt] = convert(dt)
            return value

    return cached


def _insert_points(rows: list[Row]) -> None:
    sql = (
        f"INSERT INTO {_table('metrics_point')} (timestamp, service, metric_type, value, tags) "
        "VALUES (%s, %s, %s, %s, %s)"
    )
    dumps = orjson.dumps
    # One vendor check per batch: `connection.vendor` per row went through the
    # connection proxy's thread-local lookup and was 1/6 of a batched ingest.
    to_db = _memo(rollups.db_ts) if connection.vendor == "sqlite" else (lambda dt: dt)
    params = [
        (to_db(r.timestamp), r.service, r.metric_type, r.value, dumps(r.tags).decode() if r.tags else "{}")
        for r in rows
    ]
    with connection.cursor() as cur:
        if connection.vendor == "postgresql" and len(params) > 1:
            # COPY streams the whole batch in one round trip: PostgreSQL's
            # fastest bulk path, same rows and same transaction as the INSERT.
            copy_sql = f"COPY {_table('metrics_point')} (timestamp, service, metric_type, value, tags) FROM STDIN"
            with cur.cursor.copy(copy_sql) as copy:
                for row in params:
                    copy.write_row(row)
            return
        cur.executemany(sql, params)


def _touch_services(rows: list[Row], now: datetime) -> None:
    span: dict[str, tuple[datetime, datetime]] = {}
    for r in rows:
        cur_span = span.get(r.service)
        if cur_span is None:
            span[r.service] = (r.timestamp, r.timestamp)
        else:
            span[r.service] = (min(cur_span[0], r.timestamp), max(cur_span[1], r.timestamp))
    greatest = "MAX" if connection.vendor == "sqlite" else "GREATEST"
    least = "MIN" if connection.vendor == "sqlite" else "LEAST"
    table = _table("metrics_service")
    sql = (
        f"INSERT INTO {table} (name, first_seen, last_seen, series_count) VALUES (%s, %s, %s, 0) "
        f"ON CONFLICT (name) DO UPDATE SET last_seen = {greatest}({table}.last_seen, excluded.last_seen), "
        f"first_seen = {least}({table}.first_seen, excluded.first_seen)"
    )
    with connection.cursor() as cur:
        cur.executemany(sql, [(name, rollups.db_ts(lo), rollups.db_ts(hi)) for name, (lo, hi) in sorted(span.items())])


def store(
    rows: list[Row],
    now: datetime | None = None,
    contributions: list[rollups.MinuteSummaries] | None = None,
) -> IngestResult:
    """Commit rows and their alert effects atomically; broadcast after commit.

    `contributions` are pre-bucketed observations (OTLP histogram buckets) for
    the rollups of the same minutes, stored in the same transaction.
    """
    now = now or datetime.now(UTC)
    with transaction.atomic():
        _guard_cardinality(rows, now)
        _insert_points(rows)
        _touch_services(rows, now)
        if contributions:
            rollups.insert_contributions(contributions)
        rollups.refresh_late_minutes(rows)
        outcome = evaluate(rows)
    stats.points_ingested.inc(len(rows))
    wire_ts = _memo(iso)
    points: list[PointDict] = [
        {
            "timestamp": wire_ts(r.timestamp) or "",
            "service": r.service,
            "metric_type": r.metric_type,
            "value": r.value,
            "tags": r.tags,
        }
        for r in rows
    ]
    return IngestResult(accepted=len(rows), points=points, breached=outcome.breached, changed=outcome.changed)
