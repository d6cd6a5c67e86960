"""PostgreSQL: raw points (metrics_point) are partitioned by day, so retention drops whole days.

Migration 0009 made `metrics_point` a `PARTITION BY RANGE (timestamp)` table
with one partition per UTC day (`metrics_point_pYYYYMMDD`) and a DEFAULT
partition (`metrics_point_default`) that takes any timestamp no day partition
covers (a day the runner has not created yet, the test suite's literal dates).
SQLite keeps one plain table; every function here is a no-op there.

- `ensure(now)` creates the day partitions of the accepted ingest window
  (now - RAW_RETENTION_HOURS) through AHEAD_DAYS ahead. A new partition is
  created as a plain table and then ATTACHed: ATTACH takes SHARE UPDATE
  EXCLUSIVE on the parent, which inserts (ROW EXCLUSIVE) do not wait for,
  where `CREATE TABLE ... PARTITION OF` takes ACCESS EXCLUSIVE on it. Rows the
  default partition already holds for that day are moved into it first, under
  a lock on the default partition only.
- `drop_expired(before)` detaches, then drops, the day partitions that lie
  wholly before `before` and returns how many rows they held. DETACH takes
  ACCESS EXCLUSIVE on the parent and the default partition (PostgreSQL
  refuses `DETACH ... CONCURRENTLY` while a DEFAULT partition exists), so it
  waits at most DROP_LOCK_TIMEOUT_MS for the lock: behind a long read an
  ingest would otherwise queue for as long as the read runs. A detach that
  times out is left for the next pass; retention's batched delete removes
  that day's rows meanwhile, so retention stays exact either way. The
  detached table is counted and dropped in a transaction of its own, which
  locks nothing ingest uses.

Several instances may run both at once: each change is one transaction under
a transaction-level advisory lock.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction

log = logging.getLogger(__name__)

PARENT = "metrics_point"
DEFAULT = "metrics_point_default"
COLUMNS = "id, timestamp, service, metric_type, value, tags"
# Day partitions created ahead of today, so a runner that stops for a while
# does not send the next day's points to the default partition.
AHEAD_DAYS = 2
# The longest an ingest can queue behind a partition DROP waiting for its lock.
DROP_LOCK_TIMEOUT_MS = 50
# The longest an ATTACH waits for its locks (it blocks only inserts into the default partition).
ATTACH_LOCK_TIMEOUT_MS = 1_000
# pg_advisory_xact_lock key: "metrics_point partitions".
ADVISORY_KEY = 0x6D70_7061_7274


@dataclass(frozen=True, order=True)
class Day:
    day: date

    @property
    def name(self) -> str:
        return f"{PARENT}_p{self.day:%Y%m%d}"

    @property
    def start(self) -> datetime:
        return datetime.combine(self.day, time(), tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=1)


_NAME = re.compile(rf"^{PARENT}_p(\d{{8}})$")


def partitioned() -> bool:
    """True on PostgreSQL once migration 0009 has partitioned the table."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cur:
        cur.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [PARENT])
        row = cur.fetchone()
    return bool(row) and row[0] == "p"


def days() -> list[Day]:
    """The day partitions that exist, oldest first."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
            [PARENT],
        )
        names = [row[0] for row in cur.fetchall()]
    found = [_NAME.match(name) for name in names]
    return sorted(Day(date.fromisoformat(m.group(1))) for m in found if m)


def _set_lock_timeout(cur, ms: int) -> None:  # type: ignore[no-untyped-def]
    # Local to the transaction (the savepoint, inside a test's transaction).
    cur.execute("SELECT set_config('lock_timeout', %s, true)", [f"{ms}ms"])


def create(day: Day) -> int | None:
    """Create and attach `day`'s partition, moving its rows out of the default partition.

    Returns the rows moved, or None if the partition already existed.
    """
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_KEY])
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", [day.name])
        if cur.fetchone()[0]:
            return None
        _set_lock_timeout(cur, ATTACH_LOCK_TIMEOUT_MS)
        # Taken first: ATTACH scans the default partition under this lock, and a
        # point inserted there between the move and the ATTACH would fail it.
        cur.execute(f"LOCK TABLE {DEFAULT} IN ACCESS EXCLUSIVE MODE")
        cur.execute(f"CREATE TABLE {day.name} (LIKE {PARENT} INCLUDING DEFAULTS)")
        window = "timestamp >= %s AND timestamp < %s"
        cur.execute(
            f"INSERT INTO {day.name} ({COLUMNS}) SELECT {COLUMNS} FROM {DEFAULT} WHERE {window}", [day.start, day.end]
        )
        moved = max(cur.rowcount, 0)
        if moved:
            cur.execute(f"DELETE FROM {DEFAULT} WHERE {window}", [day.start, day.end])
        cur.execute(
            f"ALTER TABLE {PARENT} ATTACH PARTITION {day.name} FOR VALUES FROM (%s) TO (%s)", [day.start, day.end]
        )
    return moved


def wanted(now: datetime) -> list[Day]:
    """The days of the accepted ingest window, and AHEAD_DAYS more."""
    first = (now - timedelta(hours=settings.TELEMETRY["RAW_RETENTION_HOURS"])).astimezone(UTC).date()
    last = now.astimezone(UTC).date() + timedelta(days=AHEAD_DAYS)
    return [Day(first + timedelta(days=n)) for n in range((last - first).days + 1)]


def ensure(now: datetime) -> list[Day]:
    """Create the missing day partitions of `wanted(now)`; returns those created. Idempotent."""
    if not partitioned():
        return []
    have = set(days())
    created = []
    for day in wanted(now):
        if day in have:
            continue
        try:
            moved = create(day)
        except DatabaseError as exc:  # a lock timeout: the next pass tries again
            log.warning("partition %s not created: %s", day.name, exc)
            continue
        if moved is not None:
            created.append(day)
            if moved:
                log.info("partition %s created; %d rows moved from %s", day.name, moved, DEFAULT)
    return created


def drop(day: Day) -> int | None:
    """Detach `day`'s partition, then drop it; returns the rows it held, or None if the parent's lock was not granted in time.

    Two transactions: the DETACH holds the parent's ACCESS EXCLUSIVE lock for
    milliseconds. A DROP of the attached partition would hold it through its
    commit, which unlinks the partition's files (271 ms for a day of 1.64 M
    points, 376 MB, on the bench machine): every ingest would wait that long.
    """
    try:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_KEY])
            _set_lock_timeout(cur, DROP_LOCK_TIMEOUT_MS)
            cur.execute(f"ALTER TABLE {PARENT} DETACH PARTITION {day.name}")
    except DatabaseError as exc:
        log.info("partition %s not dropped this pass: %s", day.name, exc)
        return None
    return _drop_detached(day.name)


def _drop_detached(name: str) -> int:
    """Drop a detached day table (no insert can reach it any more); returns the rows it held."""
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_KEY])
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        if not cur.fetchone()[0]:
            return 0  # another instance dropped it
        cur.execute(f"SELECT COUNT(*) FROM {name}")
        rows = int(cur.fetchone()[0])
        cur.execute(f"DROP TABLE {name}")
    return rows


def detached() -> list[str]:
    """Day tables that a pass detached and did not get to drop (it stopped in between)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' AND c.relname ~ %s "
            "AND c.relnamespace = current_schema()::regnamespace AND NOT c.relispartition ORDER BY 1",
            [_NAME.pattern],
        )
        return [row[0] for row in cur.fetchall()]


def drop_expired(before: datetime) -> int:
    """Drop every day partition that ends at or before `before`; returns the rows they held."""
    if not partitioned():
        return 0
    leftovers = sum(_drop_detached(name) for name in detached())
    return leftovers + sum(drop(day) or 0 for day in days() if day.end <= before)
