"""The group-commit writer (metrics.ingest.writer) run as production runs it: its own thread, real commits.

Each test builds a GroupWriter of its own and holds its jobs at chosen points
with events, so a group's composition and timing are decided by the test,
not by the scheduler. The lock test goes through the real ingest path
(POST /metrics/ingest, the process's writer) against a write lock held by
another connection: on SQLite a second connection to the test's file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import OperationalError, connection

from metrics import stats
from metrics.ingest import writer as process_writer
from metrics.ingest.store import lock_services
from metrics.ingest.writer import ABANDONED, COMMITTING, MAX_GROUP_JOBS, Abandoned, GroupWriter, wait
from metrics.models import Point, Series, Service

pytestmark = pytest.mark.django_db(transaction=True)

AT = "2026-11-30T12:00:00Z"
WAIT = 30  # generous: a bound on a condition, never a duration the test needs


def store_service(name: str) -> str:
    Service.objects.create(name=name, first_seen=AT, last_seen=AT)
    return name


def blocked_until(gate: threading.Event, started: threading.Event | None = None) -> str:
    if started is not None:
        started.set()
    assert gate.wait(WAIT)
    return "released"


def stored() -> set[str]:
    return set(Service.objects.values_list("name", flat=True))


def groups_committed() -> int:
    """How many groups the writer has committed: a job's group is the one after those that committed before it ran."""
    return int(stats.snapshot()["ingest_groups"])


def store_service_in_group(name: str) -> tuple[str, int]:
    return store_service(name), groups_committed()


def held(writer: GroupWriter) -> threading.Event:
    """Hold the writer in a group of its own; jobs submitted until the returned gate is set queue up behind it."""
    gate, holding = threading.Event(), threading.Event()
    writer.submit(blocked_until, gate, holding)
    assert holding.wait(WAIT)
    return gate


def writer_idle(writer: GroupWriter) -> None:
    """Every job submitted so far has its outcome: a job submitted now has run (groups run in order)."""
    writer.submit(lambda: None).future.result(WAIT)


@contextmanager
def write_lock_held_elsewhere() -> Iterator[None]:
    """Another connection's transaction holding what the writer needs, until the block ends.

    SQLite: a plain sqlite3 connection to the test's file holds BEGIN IMMEDIATE,
    so the writer's own BEGIN IMMEDIATE waits (the group is taken, its job not
    yet run). PostgreSQL: the points table is locked, so the job's INSERT waits
    (the job is running).
    """
    if connection.vendor == "sqlite":
        outside = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
        outside.execute("BEGIN IMMEDIATE")
    else:
        outside = connection.get_new_connection(connection.get_connection_params())
        outside.execute(f"LOCK TABLE {Point._meta.db_table} IN EXCLUSIVE MODE")
    try:
        yield
    finally:
        outside.rollback()
        outside.close()


def group_of(writer: GroupWriter, *jobs):  # type: ignore[no-untyped-def]
    """Submit jobs while the writer is held by a gate job, so they form the next group together."""
    gate, holding = threading.Event(), threading.Event()
    first = writer.submit(blocked_until, gate, holding)
    assert holding.wait(WAIT)
    submitted = [writer.submit(func, *args) for func, *args in jobs]
    gate.set()
    assert first.future.result(WAIT) == "released"
    return submitted


def test_a_job_answered_503_after_its_savepoint_is_rolled_back_with_its_group():
    """The review's reproduction: a point stored early in a group whose client got 503 must not commit."""
    writer = GroupWriter()
    slow_gate, slow_started = threading.Event(), threading.Event()
    early, slow = group_of(writer, (store_service, "early"), (blocked_until, slow_gate, slow_started))
    assert slow_started.wait(WAIT)  # `early` has run and released its savepoint

    async def client_of_early() -> None:
        with pytest.raises(TimeoutError):
            await wait(writer, early, timeout=0.01)

    asyncio.run(client_of_early())
    slow_gate.set()
    assert slow.future.result(WAIT) == "released"
    with pytest.raises(Abandoned):
        early.future.result(WAIT)
    assert "early" not in stored()


def test_the_rest_of_a_group_commits_when_one_client_walked_away():
    writer = GroupWriter()
    slow_gate, slow_started = threading.Event(), threading.Event()
    early, kept, slow = group_of(
        writer, (store_service, "early"), (store_service, "kept"), (blocked_until, slow_gate, slow_started)
    )
    assert slow_started.wait(WAIT)
    assert writer.abandon(early)
    slow_gate.set()
    assert kept.future.result(WAIT) == "kept"
    assert slow.future.result(WAIT) == "released"
    assert stored() == {"kept"}


class BlockedEachRun:
    """A job that holds its group on every run until that run's gate is set: first run, then the rerun."""

    def __init__(self) -> None:
        self.started = [threading.Event(), threading.Event()]
        self.gates = [threading.Event(), threading.Event()]
        self.runs = 0

    def __call__(self) -> str:
        run, self.runs = self.runs, self.runs + 1
        self.started[run].set()
        assert self.gates[run].wait(WAIT)
        return "released"


def test_a_rerun_after_a_late_abandonment_commits_even_when_more_clients_time_out_during_it():
    """A loaded PostgreSQL soak answered every ingest 503 for minutes: each rerun outlasted more deadlines and rolled
    back again. After one late abandonment the rerun is pinned: its clients wait for its COMMIT instead."""
    writer = GroupWriter()
    slow = BlockedEachRun()
    retries = stats.snapshot()["ingest_group_retries"]
    early, kept, held_job = group_of(writer, (store_service, "early"), (store_service, "kept"), (slow,))
    assert slow.started[0].wait(WAIT)
    assert writer.abandon(early)  # after its savepoint: the group must roll back and run again
    slow.gates[0].set()
    assert slow.started[1].wait(WAIT)  # the rerun, holding `kept` in its transaction
    assert not writer.abandon(kept)  # its client's time ran out too, but it must wait for the outcome
    slow.gates[1].set()
    assert kept.future.result(WAIT) == "kept"
    assert held_job.future.result(WAIT) == "released"
    assert stored() == {"kept"}
    assert stats.snapshot()["ingest_group_retries"] == retries + 1


def test_a_job_abandoned_while_queued_never_runs():
    writer = GroupWriter()
    gate, holding = threading.Event(), threading.Event()
    writer.submit(blocked_until, gate, holding)
    assert holding.wait(WAIT)
    queued = writer.submit(store_service, "queued")
    assert writer.abandon(queued)
    after = writer.submit(store_service, "after")
    gate.set()
    assert after.future.result(WAIT) == "after"
    with pytest.raises(Abandoned):
        queued.future.result(WAIT)
    assert stored() == {"after"}


def test_one_failing_job_leaves_the_others_of_its_group_committed():
    writer = GroupWriter()
    ok1, bad, ok2 = group_of(writer, (store_service, "one"), (store_service, "one"), (store_service, "two"))
    assert ok1.future.result(WAIT) == "one"
    assert ok2.future.result(WAIT) == "two"
    with pytest.raises(Exception, match="(?i)unique"):
        bad.future.result(WAIT)
    assert stored() == {"one", "two"}


def test_a_client_whose_group_is_already_committing_waits_for_the_real_answer():
    writer = GroupWriter()
    job = writer.submit(store_service, "committed")
    assert job.future.result(WAIT) == "committed"
    job.state = COMMITTING  # as it is between the last check and COMMIT
    assert writer.abandon(job) is False
    assert job.state == COMMITTING

    async def client() -> str:
        return await wait(writer, job, timeout=0.01)

    assert asyncio.run(client()) == "committed"


def test_abandoning_twice_is_still_abandoned():
    writer = GroupWriter()
    gate, holding = threading.Event(), threading.Event()
    writer.submit(blocked_until, gate, holding)
    assert holding.wait(WAIT)
    job = writer.submit(store_service, "x")
    assert writer.abandon(job) and writer.abandon(job)
    assert job.state == ABANDONED
    gate.set()
    with pytest.raises(Abandoned):
        job.future.result(WAIT)


def test_an_ingest_answered_503_while_the_database_is_locked_stores_nothing_once_the_lock_is_released(
    client, telemetry
):
    telemetry(DB_ANSWER_TIMEOUT_SECONDS=0.5)  # the lock below outlasts it: it is only released after the answer
    point = {"service": "locked", "metric_type": "cpu", "value": 1.0}
    with write_lock_held_elsewhere():
        response = client.post("/metrics/ingest", data=json.dumps(point), content_type="application/json")
        assert response.status_code == 503, response.content
        assert response["Retry-After"]
    # The request's job waited on the lock; now its group runs, without it.
    writer_idle(process_writer.writer)
    assert not Point.objects.exists()
    assert not Series.objects.exists()
    assert stored() == set()
    # The writer is not stuck: the next request is stored, alone.
    again = {**point, "service": "after", "value": 2.0}
    assert client.post("/metrics/ingest", data=json.dumps(again), content_type="application/json").status_code == 200
    assert list(Point.objects.values_list("service", "value")) == [("after", 2.0)]


def test_a_job_that_would_overflow_the_group_weight_starts_the_next_group():
    writer = GroupWriter(max_group_weight=10)
    gate = held(writer)
    weights = {"a": 6, "b": 6, "c": 4, "d": 1, "heavy": 50, "e": 1}
    jobs = {name: writer.submit(store_service_in_group, name, weight=weight) for name, weight in weights.items()}
    gate.set()
    groups = {name: job.future.result(WAIT)[1] for name, job in jobs.items()}
    # The holding group commits first (1). a+b would weigh 12: b starts the next group, which
    # c fills to exactly 10; d overflows it; a job heavier than the cap still runs, alone.
    assert groups == {"a": 1, "b": 2, "c": 2, "d": 3, "heavy": 4, "e": 5}
    assert stored() == set(weights)


def test_a_group_stops_at_max_group_jobs_and_the_rest_form_the_next():
    writer = GroupWriter()
    gate = held(writer)
    jobs = [writer.submit(groups_committed) for _ in range(MAX_GROUP_JOBS + 2)]
    gate.set()
    # After the holding group (1): MAX_GROUP_JOBS in one group, the two left over in the next.
    assert [job.future.result(WAIT) for job in jobs] == [1] * MAX_GROUP_JOBS + [2, 2]


def test_jobs_submitted_from_one_loop_and_committed_together_wake_it_once():
    """Each wake-up is a self-pipe write after which the writer waits to win the GIL back: once per group, not per job."""
    writer = GroupWriter()

    async def clients() -> tuple[list[object], list[object]]:
        loop = asyncio.get_running_loop()
        wakes: list[object] = []
        real = loop.call_soon_threadsafe

        def counting(callback, *args, **kwargs):  # type: ignore[no-untyped-def]
            wakes.append(callback)
            return real(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
        gate, holding = threading.Event(), threading.Event()
        first = writer.submit(blocked_until, gate, holding)
        assert holding.wait(WAIT)
        jobs = [writer.submit(store_service, name) for name in ("a", "a", "b")]
        gate.set()
        answers = await asyncio.gather(*(wait(writer, job, WAIT) for job in [first, *jobs]), return_exceptions=True)
        return answers, wakes

    answers, wakes = asyncio.run(clients())
    assert answers[:2] == ["released", "a"] and answers[3] == "b"
    assert "unique" in str(answers[2]).lower()
    assert len(wakes) == 2  # the gate's group, then the group of three
    assert stored() == {"a", "b"}


def test_jobs_submitted_from_a_loop_hear_that_their_group_failed(monkeypatch):
    writer = GroupWriter()

    def commit_fails(jobs, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise OperationalError("disk I/O error")

    monkeypatch.setattr(writer, "_run_group", commit_fails)

    async def client() -> None:
        job = writer.submit(store_service, "lost")
        with pytest.raises(OperationalError, match="disk I/O"):
            await wait(writer, job, WAIT)

    asyncio.run(client())
    assert stored() == set()


def touch_service(name: str, both_hold: threading.Barrier | None = None) -> str:
    """Upsert a service row as ingest does (a row lock until COMMIT); the first run waits until both writers hold one."""
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO metrics_service (name, first_seen, last_seen, series_count) VALUES (%s, %s, %s, 0) "
            "ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen",
            [name, AT, AT],
        )
    if both_hold is not None and not both_hold.broken:
        with contextlib.suppress(threading.BrokenBarrierError):
            both_hold.wait(WAIT)  # on a rerun the other writer has moved on: do not wait again
            both_hold.abort()
    return name


def test_two_writers_locking_the_same_services_in_opposite_orders_both_commit():
    """Two processes' groups took metrics_service rows in opposite orders: PostgreSQL's deadlock victim answered 503
    (figure 14, two daphne processes). The victim's group now rolls back, lets the other commit, and runs again."""
    if connection.vendor != "postgresql":
        pytest.skip("row-lock deadlocks need PostgreSQL: SQLite has one writer lock")
    for name in ("left", "right"):
        store_service(name)
    both_hold = threading.Barrier(2)
    one, other = GroupWriter(), GroupWriter()
    retries = stats.snapshot()["ingest_group_retries"]
    first = group_of(one, (touch_service, "left", both_hold), (touch_service, "right"))
    second = group_of(other, (touch_service, "right", both_hold), (touch_service, "left"))
    assert [job.future.result(WAIT) for job in first + second] == ["left", "right", "right", "left"]
    # Usually one victim; both backends' deadlock checks fire a second after the barrier, and now and then
    # the second runs before the first victim's locks are gone, so both groups rerun (1 in ~10 runs here).
    assert retries + 1 <= stats.snapshot()["ingest_group_retries"] <= retries + 2


def touch_and_hold(name: str, holding: threading.Event, release: threading.Event) -> str:
    touch_service(name)
    holding.set()
    assert release.wait(WAIT)
    return name


def a_writer_waits_on_a_row_lock() -> bool:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return cur.fetchone()[0] > 0


def test_groups_take_their_services_row_locks_in_name_order_first_so_two_processes_never_deadlock():
    """Figure 14 on PostgreSQL: each job locked its own services in order, but a group runs its jobs in arrival
    order, so two processes' groups deadlocked about once a second, each costing a second of deadlock_timeout."""
    if connection.vendor != "postgresql":
        pytest.skip("row-lock deadlocks need PostgreSQL: SQLite has one writer lock")
    for name in ("left", "right"):
        store_service(name)
    one, other = GroupWriter(lock_first=lock_services), GroupWriter(lock_first=lock_services)
    holding, release = threading.Event(), threading.Event()
    retries = stats.snapshot()["ingest_group_retries"]
    both = ("left", "right")
    first = [
        one.submit(touch_and_hold, "left", holding, release, locks=both),
        one.submit(touch_service, "right", locks=both),
    ]
    assert holding.wait(WAIT)
    second = [other.submit(touch_service, "right", locks=both), other.submit(touch_service, "left", locks=both)]
    deadline = time.monotonic() + WAIT
    while not a_writer_waits_on_a_row_lock():
        assert time.monotonic() < deadline, "the second group never waited for the first one's locks"
        time.sleep(0.01)
    release.set()
    assert [job.future.result(WAIT) for job in first + second] == ["left", "right", "right", "left"]
    assert stats.snapshot()["ingest_group_retries"] == retries


def test_an_ingest_names_its_services_so_its_group_locks_them_first(client, monkeypatch):
    locked: list[list[str]] = []

    def recording(names: list[str]) -> None:
        locked.append(names)
        lock_services(names)

    monkeypatch.setattr(process_writer.writer, "lock_first", recording)
    points = [{"service": s, "metric_type": "cpu", "value": 1.0} for s in ("web", "api", "web")]
    response = client.post("/metrics/ingest", data=json.dumps(points), content_type="application/json")
    assert response.status_code == 200, response.content
    assert locked == [["api", "web"]]


def queries_logged_on_this_thread() -> int:
    return len(connection.queries_log)


def test_with_debug_on_the_writers_query_log_holds_its_current_group_not_every_group_since_start(settings):
    """The writer serves no request, so nothing cleared its DEBUG query log: each batch INSERT stayed in it with its
    literal values, up to Django's 9,000 entries, and a `make run` demo or a soak grew by hundreds of megabytes."""
    settings.DEBUG = True
    writer = GroupWriter()
    first = writer.submit(queries_logged_on_this_thread).future.result(WAIT)
    for name in ("a", "b", "c", "d", "e"):
        writer.submit(store_service, name).future.result(WAIT)
    assert stored() == {"a", "b", "c", "d", "e"}
    assert writer.submit(queries_logged_on_this_thread).future.result(WAIT) == first
