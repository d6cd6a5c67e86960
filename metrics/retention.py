"""Retention: roll up, then delete what is past its retention, in batches."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction

from . import rollups
from .alerts import silences as alert_silences
from .models import Alert

BATCH = 5_000
# Pause between delete batches. SQLite has one writer: a loop that starts its
# next transaction right after committing starves ingests waiting on the busy
# handler, so each batch leaves the lock free long enough for them to take it.
YIELD_SECONDS = 0.03


@dataclass
class PruneReport:
    rolled_up: int = 0
    points_deleted: int = 0
    rollups_deleted: int = 0
    alerts_deleted: int = 0
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


def _delete_batched(table: str, column: str, before: datetime, extra: str = "") -> int:
    """Delete in short transactions so concurrent ingestion keeps getting the write lock."""
    total = 0
    sql = (
        f"DELETE FROM {table} WHERE id IN "
        f"(SELECT id FROM {table} WHERE {column} < %s {extra} ORDER BY {column} LIMIT {BATCH})"
    )
    while True:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(sql, [rollups.db_ts(before)])
            deleted = cur.rowcount
        total += max(deleted, 0)
        if deleted < BATCH:
            return total
        time.sleep(YIELD_SECONDS)


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
        report.alerts_deleted = _count("metrics_alert", "resolved_at", alerts_cut, resolved)
        return report
    report.rolled_up = rollups.roll_up(now)
    # Never delete a raw minute before its rollup exists.
    boundary = rollups.rolled_through() or points_cut
    report.points_deleted = _delete_batched("metrics_point", "timestamp", min(points_cut, boundary))
    # Histogram buckets (OTLP) live as long as the raw points they complete.
    _delete_batched("metrics_sketchcontribution", "minute", rollups.floor_minute(min(points_cut, boundary)))
    report.rollups_deleted = _delete_batched("metrics_rollup", "minute", rollups_cut)
    alert_silences.prune(alerts_cut)  # before the alerts: unlinks their notifications
    report.alerts_deleted = _delete_batched("metrics_alert", "resolved_at", alerts_cut, resolved)
    return report
