"""PostgreSQL: raw points are partitioned by day; retention drops whole days, the rest goes in batches.

metrics.maintenance.partitions and migration 0009. The test database's own
day partitions are the days around the real date it was created on; the
tests live in January 2026, so their points land in the DEFAULT partition
until a test creates their days (`partitions.ensure(NOW)`, as the runner does).
SQLite keeps one plain table: every test here is skipped there.
"""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext

from metrics.ingest.store import store
from metrics.maintenance import partitions, retention
from metrics.maintenance.runner import Scheduler
from metrics.models import Point, Rollup
from metrics.points import Row
from metrics.series import query

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="raw point partitions are PostgreSQL's (SQLite keeps one table)"
)

NOW = datetime(2026, 1, 15, 12, 0, 30, tzinfo=UTC)
# Raw retention 24 h, whole minutes: everything before 2026-01-14 12:00 goes.
CUT = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)
EXPIRED_DAY = partitions.Day(date(2026, 1, 13))
EDGE_DAY = partitions.Day(date(2026, 1, 14))


def put(at: datetime, service: str = "api", value: float = 1.0) -> int:
    store([Row(at, service, "latency", value, {})])
    return Point.objects.filter(service=service, timestamp=at).values_list("id", flat=True).get()


def home(point_id: int) -> str:
    """The partition a point is stored in."""
    with connection.cursor() as cur:
        cur.execute("SELECT tableoid::regclass::text FROM metrics_point WHERE id = %s", [point_id])
        return cur.fetchone()[0]


def exists(table: str) -> bool:
    with connection.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
        return cur.fetchone()[0]


@pytest.fixture
def days_of_now(telemetry, frozen):
    """The runner's partitions around NOW, and the expired day before them."""
    telemetry(RAW_RETENTION_HOURS=24)
    partitions.ensure(NOW)
    partitions.create(EXPIRED_DAY)


@pytest.fixture
def committed_days(telemetry, frozen):
    """As days_of_now, for tests that commit: the partitions they create are dropped afterwards."""
    telemetry(RAW_RETENTION_HOURS=24)
    made = partitions.ensure(NOW)
    partitions.create(EXPIRED_DAY)
    yield
    for day in [*made, EXPIRED_DAY]:
        with connection.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {day.name}")


@pytest.mark.django_db
def test_a_day_wholly_past_retention_is_dropped_by_prune_and_its_rows_are_gone(days_of_now):
    gone = [put(datetime(2026, 1, 13, 0, 0, tzinfo=UTC)), put(datetime(2026, 1, 13, 23, 59, 59, tzinfo=UTC))]
    edge_gone = put(datetime(2026, 1, 14, 11, 59, tzinfo=UTC))
    kept = [put(CUT), put(NOW - timedelta(minutes=5))]
    assert {home(i) for i in gone} == {EXPIRED_DAY.name}
    predicted = retention.prune(dry_run=True).points_deleted

    report = retention.prune()

    assert report.points_deleted == predicted == 3
    assert not exists(EXPIRED_DAY.name)  # dropped, not emptied
    assert EXPIRED_DAY not in partitions.days() and EDGE_DAY in partitions.days()
    assert sorted(Point.objects.values_list("id", flat=True)) == kept
    assert not Point.objects.filter(id__in=[*gone, edge_gone]).exists()
    # The dropped minutes were rolled up first.
    assert Rollup.objects.filter(minute=datetime(2026, 1, 13, 23, 59, tzinfo=UTC)).get().count == 1


@pytest.mark.django_db
def test_a_day_detached_by_a_pass_that_stopped_before_its_drop_goes_on_the_next_prune(days_of_now):
    put(datetime(2026, 1, 13, 6, 0, tzinfo=UTC))
    put(datetime(2026, 1, 13, 7, 0, tzinfo=UTC))
    with connection.cursor() as cur:  # what drop() commits before _drop_detached
        cur.execute(f"ALTER TABLE metrics_point DETACH PARTITION {EXPIRED_DAY.name}")

    report = retention.prune()

    assert report.points_deleted == 2
    assert not exists(EXPIRED_DAY.name)


@pytest.mark.django_db
def test_points_older_or_newer_than_any_day_partition_land_in_the_default_and_go_in_batches(telemetry, frozen):
    telemetry(RAW_RETENTION_HOURS=24, PRUNE_BATCH_ROWS=2)
    old = [put(datetime(2026, 1, 13, h, tzinfo=UTC)) for h in (1, 2, 3)]
    recent = put(NOW - timedelta(minutes=5))
    future = put(datetime(2099, 1, 1, tzinfo=UTC))
    assert {home(i) for i in [*old, recent, future]} == {partitions.DEFAULT}
    assert retention.prune(dry_run=True).points_deleted == 3

    assert retention.prune().points_deleted == 3

    assert sorted(Point.objects.values_list("id", flat=True)) == [recent, future]


@pytest.mark.django_db
def test_maintenance_creates_tomorrows_partition_idempotently_moving_its_points_out_of_the_default(telemetry, frozen):
    telemetry(RAW_RETENTION_HOURS=24)
    tomorrow = partitions.Day(date(2026, 1, 16))
    early = put(datetime(2026, 1, 16, 0, 30, tzinfo=UTC))  # before its day exists (the runner was down)
    assert home(early) == partitions.DEFAULT and tomorrow not in partitions.days()

    Scheduler().tick(0.0)

    assert {tomorrow, partitions.Day(date(2026, 1, 17))} <= set(partitions.days())
    assert home(early) == tomorrow.name  # moved, same id
    assert partitions.ensure(NOW) == []
    Scheduler().tick(0.0)  # a second instance's pass
    assert partitions.days().count(tomorrow) == 1
    assert put(datetime(2026, 1, 16, 9, 0, tzinfo=UTC), service="web") and Point.objects.count() == 2


@pytest.mark.django_db
def test_a_one_hour_raw_read_of_one_series_scans_one_partition(days_of_now):
    put(NOW - timedelta(minutes=30))
    spec = query.QuerySpec(NOW - timedelta(hours=1), NOW, ["api"], ["latency"], "raw", 1000, False)
    with CaptureQueriesContext(connection) as queries:
        assert len(query.raw_points(spec)["data"]) == 1
    (read,) = [q["sql"] for q in queries if "FROM metrics_point" in q["sql"]]
    with connection.cursor() as cur:
        cur.execute(f"EXPLAIN (COSTS OFF) {read}")
        plan = "\n".join(row[0] for row in cur.fetchall())
    scanned = {name for name in [d.name for d in partitions.days()] + [partitions.DEFAULT] if name in plan}
    assert scanned == {"metrics_point_p20260115"}, plan


def _hold_an_insert(at: datetime, holding: threading.Event, release: threading.Event) -> None:
    """An ingest transaction that has written its point and not committed yet (it holds the parent table)."""
    try:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(
                "INSERT INTO metrics_point (timestamp, service, metric_type, value, tags) "
                "VALUES (%s, 'held', 'latency', 7, '{}')",
                [at],
            )
            holding.set()
            release.wait(30)
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_an_insert_open_when_the_drop_comes_is_kept_and_the_day_goes_by_batches_then_by_drop(committed_days):
    put(datetime(2026, 1, 13, 6, 0, tzinfo=UTC))
    put(datetime(2026, 1, 13, 7, 0, tzinfo=UTC))
    holding, release = threading.Event(), threading.Event()
    writer = threading.Thread(target=_hold_an_insert, args=(NOW - timedelta(minutes=1), holding, release))
    writer.start()
    try:
        assert holding.wait(30)
        # The open insert holds the parent table: the DROP gives up after
        # DROP_LOCK_TIMEOUT_MS instead of queueing ingest behind it.
        report = retention.prune()
        assert report.points_deleted == 2
        assert exists(EXPIRED_DAY.name) and not Point.objects.filter(timestamp__lt=CUT).exists()
    finally:
        release.set()
        writer.join(30)
    assert Point.objects.filter(service="held").count() == 1
    assert retention.prune().points_deleted == 0
    assert not exists(EXPIRED_DAY.name)  # the empty day goes on the next pass


def _ingest_until(stop: threading.Event, under_way: threading.Event, stored: list[int]) -> None:
    try:
        while not stop.is_set():
            store([Row(NOW - timedelta(minutes=1), "stream", "latency", float(len(stored)), {})])
            stored.append(1)
            if len(stored) >= 20:
                under_way.set()
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_points_stored_while_a_day_is_dropped_are_all_kept(committed_days):
    for minute in range(50):
        put(datetime(2026, 1, 13, 6, minute, tzinfo=UTC), service="old")
    stop, under_way, stored = threading.Event(), threading.Event(), []
    writer = threading.Thread(target=_ingest_until, args=(stop, under_way, stored))
    writer.start()
    dropped = 0
    try:
        assert under_way.wait(30)
        # A DROP that meets an ingest transaction past its lock timeout is
        # tried again, as the runner's next pass would.
        for _ in range(100):
            dropped += partitions.drop_expired(CUT)
            if not exists(EXPIRED_DAY.name):
                break
        during = len(stored)
    finally:
        stop.set()
        writer.join(30)
    assert dropped == 50 and not exists(EXPIRED_DAY.name)
    assert not Point.objects.filter(service="old").exists()
    assert Point.objects.filter(service="stream").count() == len(stored) >= during >= 20


def _migrate(target: str) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([("metrics", target)])


@pytest.mark.django_db(transaction=True)
def test_the_migration_converts_a_filled_table_keeping_every_row_id_and_the_id_sequence():
    _migrate("0008_coarserollup_percentiles")
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT relkind FROM pg_class WHERE relname = 'metrics_point'")
            assert cur.fetchone()[0] == "r"
            cur.execute(
                "INSERT INTO metrics_point (timestamp, service, metric_type, value, tags) "
                "SELECT now() - g * interval '1 hour', 'api', 'latency', g, '{}' FROM generate_series(1, 100) g"
            )
            cur.execute("SELECT id, timestamp, value FROM metrics_point ORDER BY id")
            before = cur.fetchall()
    finally:
        _migrate("0009_partition_points")
    assert partitions.partitioned()
    with connection.cursor() as cur:
        cur.execute("SELECT id, timestamp, value FROM metrics_point ORDER BY id")
        assert cur.fetchall() == before
        cur.execute("SELECT COUNT(*) FROM metrics_point_default")
        assert 0 < cur.fetchone()[0] < 100  # the oldest hours: before the window's day partitions
    later = Point.objects.create(timestamp=NOW, service="api", metric_type="latency", value=1.0)
    assert later.id == before[-1][0] + 1
    assert len(partitions.days()) >= 3
