from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from metrics import broadcast, rollups
from metrics.demo import DEMO_SERVICES, DemoSource
from metrics.ingest import store
from metrics.validation import SERVICE_RE, ValidationErrors, validate_points


class Command(BaseCommand):
    help = "Feed demo services (auth, api, database, cache, queue) with realistic metrics through the ingestion path."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument(
            "--rate", type=float, default=1.0, help="Samples per second per service (each sample = 5 metric types)."
        )
        parser.add_argument("--duration", type=float, default=0, help="Seconds to run; 0 = until interrupted.")
        parser.add_argument("--services", default=",".join(DEMO_SERVICES), help="Comma-separated service names.")
        parser.add_argument("--backfill", type=float, default=0, help="First write this many hours of history, fast.")
        parser.add_argument(
            "--url", default="", help="Post to this server (e.g. http://localhost:8000) instead of writing in process."
        )
        parser.add_argument("--api-key", default="", help="API key for --url when the server requires one.")
        parser.add_argument("--seed", type=int, default=None, help="Random seed for reproducible data.")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        services = tuple(s.strip() for s in options["services"].split(",") if s.strip())
        bad = [s for s in services if not SERVICE_RE.fullmatch(s)]
        if bad or not services:
            raise CommandError(f"--services: names are 1-64 characters of [A-Za-z0-9_.-], got {bad or 'none'}")
        if options["rate"] <= 0:
            raise CommandError("--rate must be positive")
        self.source = DemoSource(services=services)
        if options["seed"] is not None:
            self.source.rng.seed(options["seed"])
        self.url = options["url"].rstrip("/")
        self.api_key = options["api_key"]
        self.stopping = False
        self.sent = 0
        self.history_points = 0
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            if options["backfill"] > 0:
                self.backfill(options["backfill"])
            if not self.stopping:
                self.stream(options["rate"], options["duration"])
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        history = f" ({self.history_points} of them rolled up as history)" if self.history_points else ""
        self.stdout.write(f"generate_metrics: sent {self.sent} points{history} for {len(services)} services")

    def _stop(self, signum, frame):  # type: ignore[no-untyped-def]
        # Finish the request in flight, then stop: a batch is all-or-nothing.
        self.stopping = True

    def send(self, points: list[dict]) -> None:
        if self.url:
            request = urllib.request.Request(
                self.url + "/metrics/ingest",
                data=orjson.dumps(points),
                headers={"Content-Type": "application/json", **({"X-API-Key": self.api_key} if self.api_key else {})},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    resp.read()
            except urllib.error.HTTPError as exc:
                self.stderr.write(f"server answered {exc.code}: {exc.read()[:300]!r}")
                return
            except (urllib.error.URLError, OSError) as exc:
                self.stderr.write(f"cannot reach {self.url}: {exc}")
                return
        else:
            try:
                result = store(validate_points(points))
            except ValidationErrors as exc:
                raise CommandError(f"{exc.message}: {exc.details[:3]}") from None
            points_out: list[dict[str, Any]] = [dict(p) for p in result.points]
            broadcast.publish_soon(points_out, [dict(a.to_dict()) for a in result.changed])
        self.sent += len(points)

    def backfill(self, hours: float) -> None:
        """History, fast: one sample every 10 s through the ingestion path.

        Samples older than the raw retention cannot be ingested as points (they
        would be pruned at once); in process they are rolled up straight into
        per-minute rollups, which is all a long-running server keeps of them.
        Over --url they are skipped.
        """
        now = datetime.now(UTC).replace(microsecond=0)
        start = now - timedelta(hours=hours) + timedelta(seconds=60)
        start -= timedelta(seconds=start.second % 10)  # samples on :00, :10 ... :50
        # A minute of margin so no sample crosses the retention line while in flight.
        raw_floor = now - timedelta(hours=settings.TELEMETRY["RAW_RETENTION_HOURS"]) + timedelta(minutes=1)
        raw_floor = raw_floor.replace(second=0)
        if self.url and start < raw_floor:
            self.stderr.write(
                f"--url: history older than the raw retention is skipped; starting at {raw_floor.isoformat()}"
            )
            start = raw_floor
        total = int((now - start).total_seconds() // 10)
        batch: list[dict] = []
        history: list[dict] = []
        for i in range(total):
            if self.stopping:
                break
            when = start + timedelta(seconds=10 * i)
            points = self.source.points_at(when)
            if when < raw_floor:
                history.extend(points)
                if len(history) >= 9000 and when.second == 50:  # whole minutes per write
                    self.store_history(history)
                    history = []
                    self._progress(i + 1, total)
                continue
            if history:
                self.store_history(history)
                history = []
            batch.extend(points)
            if len(batch) >= 2000:
                self.send(batch)
                batch = []
                self._progress(i + 1, total)
        if history and not self.stopping:
            self.store_history(history)
        if batch and not self.stopping:
            self.send(batch)
        self._progress(total, total)
        self.stderr.write("")
        if not self.url:
            # Roll the history up now rather than at the scheduler's next pass, so
            # long-range charts are complete as soon as the command returns.
            rollups.roll_up()

    def store_history(self, points: list[dict]) -> None:
        stamps = np.array([datetime.fromisoformat(p["timestamp"]).timestamp() for p in points])
        summaries = rollups.summarise(
            np.array([p["service"] for p in points], dtype=object),
            np.array([p["metric_type"] for p in points], dtype=object),
            stamps,
            np.array([p["value"] for p in points], dtype=np.float64),
        )
        with transaction.atomic():
            rollups._upsert(summaries)
        self.sent += len(points)
        self.history_points += len(points)

    def _progress(self, done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        self.stderr.write(f"\rbackfill [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", ending="")
        self.stderr.flush()

    def stream(self, rate: float, duration: float) -> None:
        interval = 1.0 / rate
        deadline = time.monotonic() + duration if duration else None
        next_at = time.monotonic()
        while not self.stopping and (deadline is None or time.monotonic() < deadline):
            self.send(self.source.points_at(datetime.now(UTC)))
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()
