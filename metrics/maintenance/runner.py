"""The one maintenance runner: keeps a running server within retention with nobody acting.

A daemon thread in each server process (started by telemetry_project/asgi.py
when TELEMETRY_SCHEDULER is on) rolls up completed minutes every
ROLLUP_INTERVAL_SECONDS (with their 5-minute, 30-minute and hour tier
windows), evaluates anomalies on them, sends due alert
notifications every pass and prunes every PRUNE_INTERVAL_SECONDS (on
PostgreSQL a prune first creates the coming days' raw point partitions,
metrics.maintenance.partitions). There is
no other runner (deployments need no cron or prune container); `manage.py
prune` is the same prune by hand. Several
instances may run it at once: roll_up serialises on the RollupState row and
every step is idempotent. Each step is one or more short transactions, so
stopping (or being killed) between or inside steps leaves no half-written state.
"""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import connections

from metrics.dbwork import unit_of_work_starts

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.last_rollup: float | None = None
        self.last_prune: float | None = None
        self.errors = 0

    def start(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            return
        self.stop_event.clear()
        self.thread = threading.Thread(target=self._run, name="telemetry-scheduler", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def tick(self, now_monotonic: float | None = None) -> None:
        """One scheduling pass: run whatever is due."""
        from metrics.alerts import anomaly, outbox
        from metrics.maintenance import retention
        from metrics.series import rollups

        conf = settings.TELEMETRY
        now = time.monotonic() if now_monotonic is None else now_monotonic
        unit_of_work_starts()
        outbox.tick()  # due notifications: every pass, each send bounded by its timeout
        if self.last_prune is None or now - self.last_prune >= conf["PRUNE_INTERVAL_SECONDS"]:
            report = retention.prune()
            self.last_prune = self.last_rollup = now
            log.info("prune: %s", report.as_dict())
        elif self.last_rollup is None or now - self.last_rollup >= conf["ROLLUP_INTERVAL_SECONDS"]:
            rollups.roll_up()
            self.last_rollup = now
            anomaly.evaluate()  # scores the minutes just rolled up (a no-op until a new one is)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.tick()
            except Exception:
                self.errors += 1
                log.exception("scheduled maintenance failed; will retry")
            self.stop_event.wait(1.0)
        connections.close_all()


scheduler = Scheduler()


def start_if_enabled() -> None:
    if settings.TELEMETRY["SCHEDULER_ENABLED"]:
        scheduler.start()
