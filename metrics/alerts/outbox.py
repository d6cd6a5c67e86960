"""The outbox runner: claim due notifications, send them in parallel, record the answer.

Called every tick by the maintenance runner (metrics.maintenance.runner). Guarantees:
- a row is claimed (a lease in `claimed_until`, taken by a conditional
  UPDATE, so it works on SQLite and PostgreSQL alike) before it is sent, so two
  runners never send it both;
- a row is marked sent right after its 2xx, and only then; a crash before the
  answer means the row is sent again once the lease lapses (at least once);
- every send has a timeout and runs in a small thread pool, so one
  destination that never answers does not hold up the others;
- failures retry with exponential backoff up to NOTIFY_RETRY_MAX_SECONDS,
  and give up (state failed) after NOTIFY_MAX_ATTEMPTS.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from . import delivery, notify
from .models import ContactPoint, Notification

log = logging.getLogger(__name__)
WORKERS = 4
BATCH = 50


@dataclass
class Job:
    id: int
    destination: str
    secret: str
    payload: dict


def backoff(attempts: int) -> timedelta:
    """Delay after the `attempts`-th failed attempt: base * 2^(n-1), capped."""
    conf = settings.TELEMETRY
    seconds = conf["NOTIFY_RETRY_BASE_SECONDS"] * 2 ** min(attempts - 1, 30)
    return timedelta(seconds=min(seconds, conf["NOTIFY_RETRY_MAX_SECONDS"]))


def lease_seconds() -> float:
    # Long enough for a send that uses its whole timeout (connect + read) plus slack.
    return settings.TELEMETRY["NOTIFY_TIMEOUT_SECONDS"] * 3 + 30


def _candidates(now: datetime, limit: int) -> list[int]:
    qs = Notification.objects.due(now).order_by("next_attempt_at", "id")
    if connection.vendor == "postgresql":
        with transaction.atomic():
            # Another runner's candidates are skipped rather than waited for.
            return list(qs.select_for_update(skip_locked=True).values_list("id", flat=True)[:limit])
    return list(qs.values_list("id", flat=True)[:limit])


def claim(now: datetime, limit: int = BATCH) -> list[int]:
    lease = now + timedelta(seconds=lease_seconds())
    claimed = []
    for pk in _candidates(now, limit):
        free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
        if Notification.objects.filter(free, pk=pk, state=Notification.PENDING).update(claimed_until=lease):
            claimed.append(pk)
    return claimed


def _freeze(row: Notification, now: datetime) -> Job | None:
    """Fix the message body at the first attempt, from the alerts' state now; retries resend it as is."""
    point = row.contact_point
    if not row.payload:
        silences = notify.active_silences(now)
        alerts = [a for a in row.alerts.order_by("metric_type", "id") if notify.silenced_by(a, silences) is None]
        if not alerts:
            # Everything in it was silenced after the change was queued.
            Notification.objects.filter(pk=row.pk).update(state=Notification.MUTED, claimed_until=None)
            return None
        if all(a.state == "resolved" for a in alerts):
            row.status = Notification.RESOLVE
        row.payload = delivery.build(point, row.status, row.group_key, alerts, now)
        Notification.objects.filter(pk=row.pk).update(payload=row.payload, status=row.status)
    return Job(row.pk, point.destination, point.secret, row.payload)


def record(pk: int, outcome: delivery.Outcome, now: datetime | None = None) -> None:
    now = now or timezone.now()
    if outcome.ok:
        Notification.objects.filter(pk=pk).update(
            state=Notification.SENT, sent_at=now, attempts=F("attempts") + 1, claimed_until=None, last_error=""
        )
        return
    row = Notification.objects.get(pk=pk)
    attempts = row.attempts + 1
    gave_up = attempts >= settings.TELEMETRY["NOTIFY_MAX_ATTEMPTS"]
    Notification.objects.filter(pk=pk).update(
        state=Notification.FAILED if gave_up else Notification.PENDING,
        attempts=attempts,
        next_attempt_at=now + backoff(attempts),
        claimed_until=None,
        last_error=outcome.error[:2000],
    )
    log.warning("notification %s attempt %s failed: %s", pk, attempts, outcome.error[:300])


def deliver_due(now: datetime | None = None) -> int:
    """One runner pass: handle ended silences, then send what is due. Returns the rows sent."""
    now = now or timezone.now()
    notify.sync_environment()
    notify.end_silences(now)
    jobs: list[Job] = []
    for row in Notification.objects.filter(pk__in=claim(now)).select_related("contact_point"):
        job = _freeze(row, now)
        if job is not None:
            jobs.append(job)
    if not jobs:
        return 0
    timeout = settings.TELEMETRY["NOTIFY_TIMEOUT_SECONDS"]
    pool = ThreadPoolExecutor(max_workers=min(WORKERS, len(jobs)), thread_name_prefix="notify")
    futures: dict[Future, Job] = {
        pool.submit(delivery.send, job.destination, job.secret, job.payload, job.id, timeout): job for job in jobs
    }
    done, stuck = wait(futures, timeout=timeout * 2 * (len(jobs) // WORKERS + 1) + 5)
    # A send past every timeout is left to its thread; its lease lapses and the row is retried.
    pool.shutdown(wait=False, cancel_futures=True)
    sent = 0
    for future in done:
        outcome = future.result()
        record(futures[future].id, outcome, now)
        sent += outcome.ok
    for future in stuck:
        log.warning("notification %s: send still running after its timeout", futures[future].id)
    return sent


def send_test(point: ContactPoint) -> delivery.Outcome:
    """The admin's "send test notification": a synthetic alert, sent now, outside the outbox."""
    from metrics.models import Alert

    now = timezone.now()
    alert = Alert(
        pk=0,
        service="telemetry-test",
        metric_type="latency",
        severity="warning",
        state="firing",
        value=1.0,
        latest_value=1.0,
        threshold=0.0,
        message=f"Test notification to {point.name}: if you read this, the contact point works.",
        started_at=now,
        last_breach_at=now,
    )
    payload = delivery.build(point, Notification.OPEN, alert.service, [alert], now)
    return delivery.send(point.destination, point.secret, payload, 0, settings.TELEMETRY["NOTIFY_TIMEOUT_SECONDS"])


def tick() -> None:
    """The maintenance runner's call: a failing delivery pass must not stop rollups and retention."""
    try:
        deliver_due()
    except Exception:
        log.exception("notification delivery failed; will retry next pass")
