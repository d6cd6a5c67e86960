"""metrics.ingest.store on batches as the writer gets them: every row once, refusals as Django's exceptions.

On SQLite a batch is written as multi-row INSERT statements (metrics/ingest/store.py);
these tests pin what that must not change.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from django.db import IntegrityError, connection

from metrics.ingest.store import statement_sizes, store
from metrics.models import Point, Series, Service
from metrics.points import Row

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def rows(n: int) -> list[Row]:
    return [
        Row(NOW - timedelta(seconds=i % 50), f"svc-{i % 3}", "cpu", float(i % 97), {"host": f"h{i % 4}"})
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [1, 2, 999, 1000, 1237])
def test_every_row_of_a_batch_is_stored_once_with_its_own_fields(frozen, n):
    batch = rows(n)
    assert store(batch, now=NOW).accepted == n
    stored = Counter(
        (service, value, tuple(tags.items()), ts)
        for service, value, tags, ts in Point.objects.values_list("service", "value", "tags", "timestamp")
    )
    assert stored == Counter((r.service, r.value, tuple(r.tags.items()), r.timestamp) for r in batch)


def test_a_batch_touches_each_of_its_series_and_services_once(frozen):
    store(rows(1237), now=NOW)
    assert Series.objects.count() == 12  # 3 services x 4 hosts (i % 3, i % 4 cycle together every 12)
    assert {s.name: (s.first_seen, s.last_seen) for s in Service.objects.all()} == {
        f"svc-{k}": (NOW - timedelta(seconds=49), NOW) for k in range(3)
    }


def test_statements_per_batch_come_in_a_dozen_sizes_whatever_the_batch_sizes():
    sizes = {size for n in range(1, 3001) for size in statement_sizes(n, 1000)}
    assert sizes == {1000, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1}
    assert all(sum(statement_sizes(n, 1000)) == n for n in range(3001))


def refuse_values_over(limit: int) -> None:
    """Make the database itself refuse some rows: a trigger on SQLite, a CHECK constraint on PostgreSQL."""
    with connection.cursor() as cur:
        if connection.vendor == "sqlite":
            cur.execute(
                f"CREATE TRIGGER refuse_points BEFORE INSERT ON metrics_point WHEN NEW.value > {limit} "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        else:
            cur.execute(f"ALTER TABLE metrics_point ADD CONSTRAINT refuse_points CHECK (value <= {limit})")


def test_a_batch_the_database_refuses_raises_djangos_integrity_error_and_stores_nothing(frozen):
    refuse_values_over(90)
    with pytest.raises(IntegrityError):
        store(rows(200), now=NOW)
    assert Point.objects.count() == 0
