"""Retention: roll up, then delete what is past its retention, in batches.

On PostgreSQL raw points are partitioned by day: a day wholly past retention
is dropped as a table (metrics.maintenance.partitions), the rest in batches.

Rollups and their tier windows (CoarseRollup) share the rollup retention.

Last, the Series and Service rows whose data is all gone, so the cardinality
caps (MAX_SERVICES, MAX_SERIES_PER_SERVICE) free up by themselves.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction

from metrics.alerts import silences as alert_silences
from metrics.maintenance import partitions
from metrics.models import Alert
from metrics.series import rollups

# Default rows per delete batch; PRUNE_BATCH_ROWS in settings.TELEMETRY sets it.
BATCH = 1_000
# SQLite has one writer. An ingest that finds the write lock taken waits in
# SQLite's busy handler, which sleeps these many milliseconds in turn between
# attempts (sqliteDefaultBusyCallback), then 100 ms at a time. A prune that
# starts its next batch before a waiting writer's next attempt starves it: with
# 5,000-row batches and 30 ms pauses, ingests waited up to 2.4 s (figure 6).
BUSY_HANDLER_SLEEPS_MS = (1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50)
# Added to each pause for the waiting thread to be scheduled.
PAUSE_SLACK_SECONDS = 0.002
# A series or service is deleted only when its last point is older than the
# retention by this margin. It exceeds the minute for which an ingesting
# process trusts a row it wrote (ingest.TRUST) plus the minute Series.last_seen
# may lag, so no process still skips writing a row that retention deleted.
IDLE_MARGIN = timedelta(minutes=5)


@dataclass
class PruneReport:
    rolled_up: int = 0
    points_deleted: int = 0
    rollups_deleted: int = 0
    tier_windows_deleted: int = 0
    alerts_deleted: int = 0
    series_deleted: int = 0
    services_deleted: int = 0
    points_cutoff: str = ""
    rollups_cutoff: str = ""
    alerts_cutoff: str = ""
    dry_run: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def cutoffs(now: datetime) -> tuple[datetime, datetime, datetime]:
    conf = settings.TELEMETRY
    return (
        now - timedelta(hours=conf["RAW_RETENTION_HOURS"]),
        now - timedelta(days=conf["ROLLUP_RETENTION_DAYS"]),
        now - timedelta(days=conf["ALERT_RETENTION_DAYS"]),
    )


def _count(table: str, column: str, before: datetime, extra: str = "") -> int:
    with connection.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} < %s {extra}", [rollups.db_ts(before)])
        return int(cur.fetchone()[0])


def batch_rows() -> int:
    # At most 10,000: each id is one parameter of the DELETE.
    return min(int(settings.TELEMETRY.get("PRUNE_BATCH_ROWS", BATCH)), 10_000)


def busy_poll_interval(waited: float) -> float:
    """The longest SQLite's busy handler can sleep before its next attempt, for a writer that has waited `waited` s.

    A writer that started waiting during a batch has waited at most as long as
    the batch held the lock; a pause this long after the batch therefore always
    contains one of its attempts, and it gets the lock before the next batch.
    """
    elapsed = 0
    for sleep in BUSY_HANDLER_SLEEPS_MS:
        elapsed += sleep
        if waited * 1000 < elapsed:
            return sleep / 1000
    return 0.1


def _pause(held: float) -> None:
    """Between two delete batches, with no transaction open: let waiting writers in."""
    if connection.vendor == "sqlite":
        time.sleep(busy_poll_interval(held) + PAUSE_SLACK_SECONDS)
    # PostgreSQL locks rows, not the database: ingest inserts never wait for a delete.


def _delete_batched(table: str, column: str, before: datetime, extra: str = "") -> int:
    """Delete rows with `column < before` in batches of batch_rows(), each its own short transaction.

    A batch's ids are read first, outside any transaction (on SQLite a read
    takes no lock), in `column` order through its index, so late-arriving old
    rows (high ids, old timestamps) go as well as appended ones. The DELETE
    repeats the condition, so a batch can only remove rows that are past
    retention. Between batches no lock is held (see _pause).
    """
    size = batch_rows()
    cutoff = rollups.db_ts(before)
    select = f"SELECT id FROM {table} WHERE {column} < %s {extra} ORDER BY {column} LIMIT {size}"
    total = 0
    while True:
        with connection.cursor() as cur:
            cur.execute(select, [cutoff])
            ids = [row[0] for row in cur.fetchall()]
        if not ids:
            return total
        started = time.monotonic()
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(
                f"DELETE FROM {table} WHERE id IN ({', '.join(['%s'] * len(ids))}) AND {column} < %s {extra}",
                [*ids, cutoff],
            )
            total += max(cur.rowcount, 0)
        if len(ids) < size:
            return total
        _pause(time.monotonic() - started)


def _no_data(alias: str, kind: str, since: datetime | None) -> str:
    """SQL: no raw point, histogram bucket or rollup left for the series or service row `alias`.

    With `since` (a dry run, before anything is deleted or rolled up) data
    counts as it will after the real run: a raw point or histogram bucket
    whose minute is inside the rollup retention leaves data behind (itself, or
    the rollup the real run's roll-up makes of it before deleting it), and
    older data is gone.
    """
    clauses = []
    for table, column, cutoff in (
        ("metrics_point", "timestamp", "rolled_since"),
        ("metrics_sketchcontribution", "minute", "rolled_since"),
        ("metrics_rollup", "minute", "rollup_since"),
    ):
        if kind == "series":
            match = f"{table}.service = {alias}.service AND {table}.metric_type = {alias}.metric_type"
        else:
            match = f"{table}.service = {alias}.name"
        when = f" AND {table}.{column} >= %({cutoff})s" if since else ""
        clauses.append(f"NOT EXISTS (SELECT 1 FROM {table} WHERE {match}{when})")
    return " AND ".join(clauses)


def _series_gone(alias: str, since: datetime | None) -> str:
    """SQL: the series row `alias` has no data left.

    Either its last point is past the rollup retention (its raw points and its
    share of the rollups expired), or its (service, metric_type) has no data at
    all: rollups carry no tags, so the exact check is per metric. Both wait
    IDLE_MARGIN past the raw retention.
    """
    last = f"COALESCE({alias}.last_seen, {alias}.first_seen)"
    return f"{last} < %(idle)s AND ({last} < %(expired)s OR ({_no_data(alias, 'series', since)}))"


def _service_gone(alias: str, since: datetime | None) -> str:
    """SQL: the service row `alias` has no data and no series that stays."""
    return (
        f"{alias}.last_seen < %(idle)s AND {_no_data(alias, 'service', since)} AND NOT EXISTS "
        f"(SELECT 1 FROM metrics_series s WHERE s.service = {alias}.name AND NOT ({_series_gone('s', since)}))"
    )


def prune_series(points_cut: datetime, rollups_cut: datetime, dry_run: bool = False) -> tuple[int, int]:
    """Delete the Series and Service rows whose data is all gone: room under the cardinality caps again."""
    params = {
        "idle": rollups.db_ts(points_cut - IDLE_MARGIN),
        "expired": rollups.db_ts(rollups_cut - IDLE_MARGIN),
        "rollup_since": rollups.db_ts(rollups_cut),
        # The first minute whose rollup is kept: raw data from here on leaves a rollup.
        "rolled_since": rollups.db_ts(
            rollups.floor_minute(rollups_cut - timedelta(microseconds=1)) + timedelta(minutes=1)
        ),
    }
    since = points_cut if dry_run else None
    with transaction.atomic(), connection.cursor() as cur:
        if dry_run:
            cur.execute(f"SELECT COUNT(*) FROM metrics_series x WHERE {_series_gone('x', since)}", params)
            series = int(cur.fetchone()[0])
            cur.execute(f"SELECT COUNT(*) FROM metrics_service x WHERE {_service_gone('x', since)}", params)
            return series, int(cur.fetchone()[0])
        # The outer last_seen test is on the deleted row itself: PostgreSQL
        # evaluates it again after waiting on a concurrent ingest's upsert of
        # that row, so a series that came back while this ran stays.
        cur.execute(
            f"DELETE FROM metrics_series WHERE id IN (SELECT x.id FROM metrics_series x WHERE {_series_gone('x', None)}) "
            "AND COALESCE(last_seen, first_seen) < %(idle)s",
            params,
        )
        series = max(cur.rowcount, 0)
        cur.execute(
            f"DELETE FROM metrics_service WHERE id IN (SELECT x.id FROM metrics_service x WHERE {_service_gone('x', None)}) "
            "AND last_seen < %(idle)s",
            params,
        )
        services = max(cur.rowcount, 0)
    if series or services:
        # This process's ingest cache would trust the deleted rows for up to a
        # minute more; other processes' caches wait out ingest.TRUST, which
        # IDLE_MARGIN exceeds.
        from metrics.ingest.store import known

        known.clear()
    return series, services


def prune(now: datetime | None = None, dry_run: bool = False) -> PruneReport:
    now = now or datetime.now(UTC)
    points_cut, rollups_cut, alerts_cut = cutoffs(now)
    report = PruneReport(
        points_cutoff=rollups.floor_minute(points_cut).isoformat(),
        rollups_cutoff=rollups_cut.isoformat(),
        alerts_cutoff=alerts_cut.isoformat(),
        dry_run=dry_run,
    )
    resolved = f"AND state = '{Alert.RESOLVED}'"
    # Raw points go by whole minutes: a minute is either complete or gone, so a
    # late point accepted at the retention edge (validation refuses anything
    # older than now - retention) can never recompute a half-deleted minute.
    points_cut = rollups.floor_minute(points_cut)
    if dry_run:
        # A real run rolls up through the current minute first; count as if it had.
        boundary = rollups.floor_minute(now)
        report.points_deleted = _count("metrics_point", "timestamp", min(points_cut, boundary))
        report.rollups_deleted = _count("metrics_rollup", "minute", rollups_cut)
        report.tier_windows_deleted = sum(
            _count("metrics_coarserollup", "start", rollups_cut, f"AND width = {width}") for width in rollups.TIERS
        )
        report.alerts_deleted = _count("metrics_alert", "resolved_at", alerts_cut, resolved)
        report.series_deleted, report.services_deleted = prune_series(points_cut, rollups_cut, dry_run=True)
        return report
    # PostgreSQL: the coming days' raw point partitions exist before points arrive for them.
    partitions.ensure(now)
    report.rolled_up = rollups.roll_up(now)
    # Never delete a raw minute before its rollup exists.
    boundary = rollups.rolled_through() or points_cut
    # PostgreSQL: whole days past retention go as partitions (no row deletes);
    # the batches then take the edge day, the default partition, and any day
    # whose DROP did not get its lock in time. SQLite: the batches take all.
    report.points_deleted = partitions.drop_expired(min(points_cut, boundary))
    report.points_deleted += _delete_batched("metrics_point", "timestamp", min(points_cut, boundary))
    # Histogram buckets (OTLP) live as long as the raw points they complete.
    _delete_batched("metrics_sketchcontribution", "minute", rollups.floor_minute(min(points_cut, boundary)))
    report.rollups_deleted = _delete_batched("metrics_rollup", "minute", rollups_cut)
    # A tier window goes with its first minute: no window outlives a minute it merged.
    report.tier_windows_deleted = sum(
        _delete_batched("metrics_coarserollup", "start", rollups_cut, f"AND width = {width}") for width in rollups.TIERS
    )
    alert_silences.prune(alerts_cut)  # before the alerts: unlinks their notifications
    report.alerts_deleted = _delete_batched("metrics_alert", "resolved_at", alerts_cut, resolved)
    report.series_deleted, report.services_deleted = prune_series(points_cut, rollups_cut)
    return report
