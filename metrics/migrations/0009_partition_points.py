from datetime import UTC, datetime

from django.db import migrations

# PostgreSQL only: metrics_point becomes PARTITION BY RANGE (timestamp), one
# partition per UTC day plus a DEFAULT partition, so retention drops whole days
# (metrics.maintenance.partitions). SQLite keeps its plain table: both
# functions return at once there, and Django's model state does not change
# (`id` stays the model's primary key; the table's is (id, timestamp), as
# PostgreSQL requires the partition key in every unique constraint).
#
# The rows are copied into the new table under the migration's ACCESS
# EXCLUSIVE lock: on a big table, run it in a maintenance window (about what
# a COPY of the table and three index builds take).

OLD = "metrics_point_unpartitioned"
INDEXES = {
    # Same names and columns as Point.Meta.indexes (partitioned indexes: each
    # partition gets its own, created with it).
    "point_series_ts_idx": "(service, metric_type, timestamp)",
    "point_ts_idx": "(timestamp)",
    "point_service_ts_idx": "(service, timestamp)",
}
COLUMNS = "id, timestamp, service, metric_type, value, tags"


def _rename_old(cur, old: str) -> None:
    cur.execute(f"ALTER TABLE metrics_point RENAME TO {old}")
    cur.execute(f"ALTER TABLE {old} RENAME CONSTRAINT metrics_point_pkey TO {old}_pkey")
    for name in INDEXES:
        cur.execute(f"ALTER INDEX {name} RENAME TO {name}_{old}")


def _copy_rows_and_ids(cur, old: str) -> None:
    cur.execute(f"INSERT INTO metrics_point ({COLUMNS}) SELECT {COLUMNS} FROM {old}")
    # The id sequence carries on where the old table's stopped.
    cur.execute(f"SELECT pg_get_serial_sequence('{old}', 'id')")
    (old_seq,) = cur.fetchone()
    cur.execute(f"SELECT last_value, is_called FROM {old_seq}")
    last, called = cur.fetchone()
    cur.execute("SELECT setval(pg_get_serial_sequence('metrics_point', 'id'), %s, %s)", [last, called])
    cur.execute(f"DROP TABLE {old}")


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from metrics.maintenance import partitions

    with schema_editor.connection.cursor() as cur:
        _rename_old(cur, OLD)
        # INCLUDING IDENTITY gives the new table an id sequence of its own (the
        # old one goes with the old table); INCLUDING DEFAULTS/STORAGE keep the
        # columns exactly as Django created them.
        cur.execute(
            f"CREATE TABLE metrics_point (LIKE {OLD} INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING STORAGE) "
            "PARTITION BY RANGE (timestamp)"
        )
        cur.execute("ALTER TABLE metrics_point ADD CONSTRAINT metrics_point_pkey PRIMARY KEY (id, timestamp)")
        for name, columns in INDEXES.items():
            cur.execute(f"CREATE INDEX {name} ON metrics_point {columns}")
        cur.execute(f"CREATE TABLE {partitions.DEFAULT} PARTITION OF metrics_point DEFAULT")
        for day in partitions.wanted(datetime.now(UTC)):
            cur.execute(
                f"CREATE TABLE {day.name} PARTITION OF metrics_point FOR VALUES FROM (%s) TO (%s)",
                [day.start, day.end],
            )
        _copy_rows_and_ids(cur, OLD)


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    old = "metrics_point_partitioned"
    with schema_editor.connection.cursor() as cur:
        _rename_old(cur, old)
        cur.execute(f"CREATE TABLE metrics_point (LIKE {old} INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING STORAGE)")
        cur.execute("ALTER TABLE metrics_point ADD CONSTRAINT metrics_point_pkey PRIMARY KEY (id)")
        for name, columns in INDEXES.items():
            cur.execute(f"CREATE INDEX {name} ON metrics_point {columns}")
        _copy_rows_and_ids(cur, old)


class Migration(migrations.Migration):

    dependencies = [
        ('metrics', '0008_coarserollup_percentiles'),
    ]

    operations = [
        migrations.RunPython(partition, unpartition, elidable=False),
    ]
