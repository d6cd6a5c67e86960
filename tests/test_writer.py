"""The group-commit writer (metrics.ingest.writer) run as production runs it: its own thread, real commits.

Each test builds a GroupWriter of its own and holds its jobs at chosen points
with events, so a group's composition and timing are decided by the test,
not by the scheduler.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.db import OperationalError

from metrics.ingest.writer import ABANDONED, COMMITTING, Abandoned, GroupWriter, wait
from metrics.models import Service

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

    def commit_fails(jobs):  # type: ignore[no-untyped-def]
        raise OperationalError("disk I/O error")

    monkeypatch.setattr(writer, "_run_group", commit_fails)

    async def client() -> None:
        job = writer.submit(store_service, "lost")
        with pytest.raises(OperationalError, match="disk I/O"):
            await wait(writer, job, WAIT)

    asyncio.run(client())
    assert stored() == set()
