"""Group commit: one thread per process writes every ingest request, many per transaction.

Before this, each request ran its transaction on its own pool thread. On
SQLite only one of them can hold the write lock; the others sat in SQLite's
busy handler, which sleeps in steps of up to 100 ms, so a 1 ms write waited
hundreds of ms at the 99th percentile and the process topped out near
200 single-point requests/s (docs/performance.md). Here requests queue for one
writer thread that takes everything waiting, runs each request in its own
savepoint (a request that fails rolls back alone, exactly as if it were on its
own) and commits the group once. Nobody spins on a lock, and the commit (an
fsync on PostgreSQL) is paid once per group instead of once per request.

A job's answer is released only after the group's COMMIT returned, so every
200 still means "committed". If BEGIN or COMMIT fails, every job of the group
fails with that error and its client gets a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction

from metrics import stats
from metrics.dbwork import unit_of_work_starts
from metrics.ingest.store import lock_services

log = logging.getLogger(__name__)

# A group stops growing at this many queued jobs: a bigger transaction only
# delays the first answers in it.
MAX_GROUP_JOBS = 256


# A job's life. The writer moves it forward; a client that times out may move
# it to ABANDONED only before COMMITTING, under the writer's lock, so "503"
# and "committed" can never both be true of one request.
QUEUED, RUNNING, COMMITTING, DONE, ABANDONED = "queued", "running", "committing", "done", "abandoned"


class _Job:
    __slots__ = ("func", "args", "future", "weight", "locks", "state", "waiter")

    def __init__(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        weight: int,
        loop: asyncio.AbstractEventLoop | None = None,
        locks: Collection[str] = (),
    ) -> None:
        self.func = func
        self.args = args
        self.future: Future[Any] = Future()
        self.weight = weight
        self.locks = locks
        self.state = QUEUED
        # The future a coroutine awaits on `loop`: _wake hands it the outcome, one loop wake-up per group.
        self.waiter: asyncio.Future[Any] | None = loop.create_future() if loop is not None else None


class Abandoned(Exception):
    """The client was answered 503: this job must not commit."""


class _Deadlocked(Exception):
    """PostgreSQL chose this group's transaction as a deadlock victim: roll it all back and run it again."""


# Two processes' groups can take the same service and series rows in different
# orders (each job upserts its own, in arrival order). PostgreSQL then cancels
# one statement after deadlock_timeout; the group rolls back, which releases
# its locks so the other commits, and runs again. A few attempts, then the
# deadlocked job fails like any other error (503) and the rest commit.
MAX_DEADLOCK_RERUNS = 3


def _is_deadlock(exc: BaseException) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) == "40P01"


class _LateAbandon(Exception):
    """A job was abandoned after its savepoint was released: roll the whole group back."""


class GroupWriter:
    """`lock_first(keys)`, when given, runs at the start of every group's transaction with the sorted
    union of its jobs' `locks`: it takes those rows' locks in that order, so two processes' groups
    never hold some of each other's rows (each job locks only its own, and a group of jobs in
    arrival order deadlocked on PostgreSQL: one second lost to deadlock_timeout per collision)."""

    def __init__(
        self, max_group_weight: int = 4 * 1024 * 1024, lock_first: Callable[[list[str]], None] | None = None
    ) -> None:
        self.max_group_weight = max_group_weight
        self.lock_first = lock_first
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._carry: _Job | None = None

    def submit(self, func: Callable[..., Any], *args: Any, weight: int = 1, locks: Collection[str] = ()) -> _Job:
        """Run func(*args) inside the next group's transaction; the future resolves after COMMIT.

        `weight` (the request's body size) bounds how much one transaction holds;
        `locks` names what the job will lock, for lock_first. Submitted from a
        coroutine, the job's `waiter` resolves on its loop too.
        """
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        job = _Job(func, args, weight, loop, locks)
        self._ensure_thread()
        self._queue.put(job)
        return job

    def abandon(self, job: _Job) -> bool:
        """Give up on a job whose client is being answered 503.

        True when the job is guaranteed never to commit; False when its group
        is already committing, and the caller must wait for the real outcome.
        """
        with self._state_lock:
            if job.state in (QUEUED, RUNNING):
                job.state = ABANDONED
                return True
            return job.state == ABANDONED

    def backlog(self) -> int:
        return self._queue.qsize()

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="telemetry-ingest-writer", daemon=True)
                self._thread.start()

    def _next_group(self) -> list[_Job]:
        first = self._carry or self._queue.get()
        self._carry = None
        group, weight = [first], first.weight
        while len(group) < MAX_GROUP_JOBS:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if weight + job.weight > self.max_group_weight:
                self._carry = job
                break
            group.append(job)
            weight += job.weight
        return group

    def _run(self) -> None:
        while True:
            group = self._next_group()
            unit_of_work_starts()
            try:
                self._commit_group(group)
            except BaseException as exc:  # noqa: BLE001 - every waiting client must get an answer
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(exc)
                if connection.in_atomic_block:  # pragma: no cover - atomic() always unwinds
                    log.error("ingest writer left a transaction open")
                if not isinstance(exc, Exception):
                    _wake(group)
                    raise
            # Every job of the group has its outcome now.
            _wake(group)

    def _commit_group(self, group: list[_Job]) -> None:
        jobs, pinned, deadlocks = group, False, 0
        while True:
            try:
                outcomes = self._run_group(jobs, pinned, rerun_on_deadlock=deadlocks < MAX_DEADLOCK_RERUNS)
                break
            except _Deadlocked:
                stats.ingest_group_retries.inc()
                deadlocks += 1
                jobs, pinned = [job for job in jobs if job.state != ABANDONED], True
            except _LateAbandon:
                # Rolled back: run the group again without the abandoned jobs,
                # so nobody else's answer depends on a client that left. The
                # rerun is pinned (its clients wait for its COMMIT): when the
                # writer is behind, more deadlines pass during every rerun, and
                # unpinned reruns rolled back again and again while every
                # client got 503 (congestion collapse, seen in a loaded soak).
                stats.ingest_group_retries.inc()
                jobs, pinned = [job for job in jobs if job.state != ABANDONED], True
        # COMMIT returned: only now may any client hear "accepted".
        stats.ingest_groups.inc()
        stats.ingest_group_jobs.inc(len(group))
        for job in group:
            if job.state == ABANDONED and not job.future.done():
                job.future.set_exception(Abandoned("the client was already answered 503"))
        for job, ok, value in outcomes:
            if job.future.done():
                continue
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)

    def _run_group(
        self, jobs: list[_Job], pinned: bool = False, rerun_on_deadlock: bool = True
    ) -> list[tuple[_Job, bool, Any]]:
        outcomes: list[tuple[_Job, bool, Any]] = []
        if pinned:
            with self._state_lock:
                jobs = [job for job in jobs if job.state != ABANDONED]
                for job in jobs:
                    job.state = COMMITTING  # abandon() now answers False: the client waits for the outcome
        with transaction.atomic():
            if self.lock_first is not None:
                keys = sorted({key for job in jobs for key in job.locks})
                if keys:
                    try:
                        self.lock_first(keys)
                    except Exception as exc:
                        if rerun_on_deadlock and _is_deadlock(exc):
                            raise _Deadlocked from exc
                        raise
            for job in jobs:
                with self._state_lock:
                    if job.state == ABANDONED:
                        continue
                    if not pinned:
                        job.state = RUNNING
                try:
                    with transaction.atomic():  # a savepoint: this job rolls back alone
                        value = job.func(*job.args)
                        if job.state == ABANDONED:
                            raise Abandoned("the client was already answered 503")
                    outcomes.append((job, True, value))
                except Exception as exc:
                    if rerun_on_deadlock and _is_deadlock(exc):
                        raise _Deadlocked from exc
                    outcomes.append((job, False, exc))
            # The last moment a client may still walk away: after this, every
            # stored job's client waits for the COMMIT's outcome.
            with self._state_lock:
                if any(ok and job.state == ABANDONED for job, ok, _ in outcomes):
                    raise _LateAbandon
                for job, _, _ in outcomes:
                    job.state = COMMITTING
        for job, _, _ in outcomes:
            job.state = DONE
        return outcomes


def _wake(jobs: list[_Job]) -> None:
    """Hand finished jobs' outcomes to the loops awaiting them: one call_soon_threadsafe per loop, not per job.

    Each call wakes the loop through its self-pipe, a syscall after which this
    thread must win the GIL back from the loop or from a request being
    validated. Once per job (asyncio.wrap_future), that wait was a quarter of
    the writer thread's time under figure 2's load (docs/performance.md).
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
    for job in jobs:
        if job.waiter is not None:
            by_loop.setdefault(job.waiter.get_loop(), []).append(job)
    for loop, waiting in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_deliver, waiting)


def _deliver(jobs: list[_Job]) -> None:
    """On the loop: copy each job's outcome into the future its coroutine awaits."""
    for job in jobs:
        waiter = job.waiter
        if waiter is None or waiter.done():
            continue
        exc = job.future.exception(timeout=0)
        if exc is None:
            waiter.set_result(job.future.result(timeout=0))
        else:
            waiter.set_exception(exc)


writer = GroupWriter(lock_first=lock_services)


async def write(func: Callable[..., Any], *args: Any, weight: int = 1, locks: Collection[str] = ()) -> Any:
    """func(*args) in the writer's next group commit, awaited for at most DB_ANSWER_TIMEOUT_SECONDS.

    Raises TimeoutError when the group has not committed in time, and the
    caller answers 503: the job then never commits (a queued job is skipped,
    a running one rolls back, even after its savepoint). A job whose group
    was already committing when the time ran out gets its real answer instead.
    `locks`: the services func will write (see GroupWriter).
    """
    if not settings.TELEMETRY.get("DB_THREAD_POOL", True):
        # The same group commit, inline on a thread of the caller's (no writer thread, no timeout).
        return await sync_to_async(write_now)(func, *args)
    return await wait(writer, writer.submit(func, *args, weight=weight, locks=locks), answer_seconds())


def write_now(func: Callable[..., Any], *args: Any) -> Any:
    """func(*args) as a group of one, committed on the calling thread: what write() does, without the thread.

    Management commands (no event loop) and write() with DB_THREAD_POOL off use
    it; the job runs through the same _commit_group as on the writer thread:
    transaction, savepoint, outcome.
    """
    job = _Job(func, args, 1)
    writer._commit_group([job])
    return job.future.result()


async def wait(group_writer: GroupWriter, job: _Job, timeout: float) -> Any:
    """The job's answer, or TimeoutError once it is certain never to commit."""
    outcome = job.waiter if job.waiter is not None else asyncio.wrap_future(job.future)
    try:
        return await asyncio.wait_for(asyncio.shield(outcome), timeout)
    except TimeoutError:
        if group_writer.abandon(job):
            # Nobody reads the Abandoned exception the writer sets later.
            outcome.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise
        return await outcome


def answer_seconds() -> float:
    """How long a request waits for the database before answering 503."""
    return float(settings.TELEMETRY.get("DB_ANSWER_TIMEOUT_SECONDS", 5))
