from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import orjson
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from metrics.demo import DEMO_SERVICES, DemoSource, database_is_empty, fill_history
from metrics.errors import ApiError
from metrics.ingest.submit import Protocol, submit_now
from metrics.points import SERVICE_RE


class Command(BaseCommand):
    help = "Feed demo services (auth, api, database, cache, queue) with realistic metrics through the ingestion path."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument(
            "--rate", type=float, default=1.0, help="Samples per second per service (each sample = 5 metric types)."
        )
        parser.add_argument("--duration", type=float, default=0, help="Seconds to run; 0 = until interrupted.")
        parser.add_argument("--services", default=",".join(DEMO_SERVICES), help="Comma-separated service names.")
        parser.add_argument(
            "--backfill",
            type=float,
            default=0,
            help="First write this many hours of history, in process (also with --url), in large batches.",
        )
        parser.add_argument(
            "--step", type=int, default=10, help="Seconds between backfill samples (divides 60 or a multiple of 60)."
        )
        parser.add_argument(
            "--if-empty", action="store_true", help="Backfill only when the database holds no points and no rollups."
        )
        parser.add_argument("--no-stream", action="store_true", help="Stop after the backfill.")
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
        step = options["step"]
        if step <= 0 or (60 % step and step % 60):
            raise CommandError("--step must divide 60 (1, 2, 5, 10, 30...) or be a multiple of 60")
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
                if options["if_empty"] and not database_is_empty():
                    self.stdout.write("backfill: skipped, the database already holds history")
                else:
                    self.backfill(options["backfill"], step)
            if not self.stopping and not options["no_stream"]:
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
                # The same seam as the HTTP API (validation, the writer, publishing after commit); trusted: no key.
                submit_now(None, orjson.dumps(points), Protocol.JSON)
            except ApiError as exc:
                raise CommandError(f"{exc.message}: {exc.details[:3]}") from None
        self.sent += len(points)

    def backfill(self, hours: float, step: int) -> None:
        """History in process through `store()`, whatever --url says: HTTP per point was the slow part."""
        end = datetime.now(UTC).replace(microsecond=0)
        self.bar_started = time.monotonic()
        report = fill_history(
            self.source,
            end - timedelta(hours=hours),
            end,
            step,
            progress=self._progress,
            stopping=lambda: self.stopping,
        )
        self.stderr.write("")
        self.sent += report.points
        self.history_points += report.history_points
        self.stdout.write(
            f"backfill: {report.points} points over {hours:g} h in {report.seconds:.1f} s "
            f"({report.history_points} older than the raw retention kept as rollups, {report.alerts} alerts)"
        )
        days = settings.TELEMETRY["ROLLUP_RETENTION_DAYS"]
        self.stdout.write(
            "backfill: for more or denser history, start from an empty database and run "
            f"`manage.py generate_metrics --backfill HOURS --step SECONDS --no-stream` (charts keep {days:g} days; "
            "--step 10 samples the raw part every 10 s)"
        )

    def _progress(self, done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        elapsed = time.monotonic() - self.bar_started
        left = f", {elapsed * (total - done) / done:.0f} s left" if done else ""
        self.stderr.write(
            f"\rbackfill [{'#' * filled}{'.' * (width - filled)}] {100 * done // max(total, 1)}% "
            f"({done / 3600:.1f} of {total / 3600:.1f} h{left})   ",
            ending="",
        )
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
