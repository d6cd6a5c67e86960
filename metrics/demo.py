"""Synthetic but realistic service metrics for the demo generator.

Each service has a base profile; values follow a daily cycle, noise, rare
spikes and occasional incidents (a few minutes of high latency and errors,
low throughput) that open alerts and later resolve them.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from metrics.points import Row

DEMO_SERVICES = ("auth", "api", "database", "cache", "queue")

PROFILES: dict[str, dict[str, float]] = {
    "auth": {"latency": 80, "error_rate": 0.004, "throughput": 350, "cpu": 35, "memory": 45},
    "api": {"latency": 140, "error_rate": 0.01, "throughput": 900, "cpu": 50, "memory": 60},
    "database": {"latency": 25, "error_rate": 0.002, "throughput": 1200, "cpu": 55, "memory": 70},
    "cache": {"latency": 3, "error_rate": 0.001, "throughput": 2500, "cpu": 20, "memory": 55},
    "queue": {"latency": 40, "error_rate": 0.003, "throughput": 400, "cpu": 30, "memory": 40},
}
DEFAULT_PROFILE = {"latency": 100, "error_rate": 0.01, "throughput": 500, "cpu": 40, "memory": 50}
ENDPOINTS = {"auth": "/login", "api": "/users", "database": "query", "cache": "get", "queue": "publish"}


@dataclass
class Incident:
    until: float
    severity: float  # 1 = warning-ish, 2 = critical-ish


@dataclass
class DemoSource:
    services: tuple[str, ...] = DEMO_SERVICES
    incident_probability: float = 1 / 900  # per service per second: about one every 15 minutes
    rng: random.Random = field(default_factory=random.Random)
    incidents: dict[str, Incident] = field(default_factory=dict)

    def rows_at(self, when: datetime) -> list[Row]:
        """points_at as validated rows: the generator's own values are in range by construction."""
        return [Row(when, p["service"], p["metric_type"], p["value"], p["tags"]) for p in self.points_at(when)]

    def points_at(self, when: datetime) -> list[dict]:
        t = when.timestamp()
        # Daily cycle: quiet at 04:00 UTC, busiest at 16:00 UTC.
        day = 0.5 + 0.5 * math.sin((t / 86400.0 - 10 / 24) * 2 * math.pi)
        stamp = when.isoformat().replace("+00:00", "Z")
        out = []
        for svc in self.services:
            incident = self.incidents.get(svc)
            if incident and incident.until <= t:
                del self.incidents[svc]
                incident = None
            if incident is None and self.rng.random() < self.incident_probability:
                incident = Incident(until=t + self.rng.uniform(60, 240), severity=self.rng.choice((1.0, 2.0)))
                self.incidents[svc] = incident
            factor = incident.severity if incident else 0.0
            base = PROFILES.get(svc, DEFAULT_PROFILE)
            spike = 1.0 + (self.rng.random() < 0.01) * self.rng.uniform(0.5, 2.0)
            latency = base["latency"] * (0.8 + 0.4 * day) * self.rng.lognormvariate(0, 0.15) * spike
            error_rate = base["error_rate"] * (0.7 + 0.6 * day) * self.rng.lognormvariate(0, 0.3)
            throughput = base["throughput"] * (0.4 + 0.6 * day) * self.rng.uniform(0.9, 1.1)
            if factor:
                # An incident crosses the seeded thresholds whatever the service's
                # normal level: severity 1 the warning line, severity 2 the critical one.
                latency = max(latency, (300 + 400 * factor) * self.rng.lognormvariate(0, 0.05))
                error_rate += 0.03 + 0.04 * factor
                throughput = min(throughput, (140 - 50 * factor) * self.rng.uniform(0.8, 1.0))
            cpu = base["cpu"] * (0.7 + 0.5 * day) + self.rng.gauss(0, 3) + 25 * factor
            memory = base["memory"] + 5 * day + self.rng.gauss(0, 1.5) + 8 * factor
            tags = {"endpoint": ENDPOINTS.get(svc, "/"), "region": "us-east", "host": f"{svc}-1"}
            values = {
                "latency": max(0.1, latency),
                "error_rate": min(1.0, max(0.0, error_rate)),
                "throughput": max(0.0, throughput),
                "cpu": min(100.0, max(0.0, cpu)),
                "memory": min(100.0, max(0.0, memory)),
            }
            for metric_type, value in values.items():
                out.append(
                    {
                        "timestamp": stamp,
                        "service": svc,
                        "metric_type": metric_type,
                        "value": round(value, 4),
                        "tags": tags,
                    }
                )
        return out


# --- History --------------------------------------------------------------------

BATCH_POINTS = 20_000


@dataclass
class FillReport:
    points: int = 0  # points stored through the ingestion path
    history_points: int = 0  # of them, older than the raw retention: kept only as rollups
    alerts: int = 0  # alerts the history opened
    seconds: float = 0.0
    stopped: bool = False


def database_is_empty() -> bool:
    """No raw points and no rollups: a first start."""
    from .models import Point, Rollup

    return not Point.objects.exists() and not Rollup.objects.exists()


def fill_history(
    source: DemoSource,
    start: datetime,
    end: datetime,
    step: int,
    progress: Callable[[int, int], None] | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> FillReport:
    """Samples in [start, end) stored through `store()` in large batches, then rolled up and pruned.

    Samples come every `step` seconds within the raw retention and once a
    minute before it: that part survives only as per-minute rollups, which is
    all a server that had run all along would keep. Each batch is one
    transaction with alerts evaluated on the points' own timestamps; completed
    minutes are rolled up after every batch, and a final prune removes the raw
    points past the retention. Meant for a database without newer data, so
    that alerts see the points in time order.
    """
    from metrics.ingest.store import store
    from metrics.maintenance import retention
    from metrics.series import rollups

    from .models import Alert

    began = time.perf_counter()
    report = FillReport()
    alerts_before = Alert.objects.count()
    raw_cutoff, rollup_cutoff, _ = retention.cutoffs(end)
    # Nothing older than the rollup retention: the final prune would drop it at once.
    first = max(int(start.timestamp()) // 60 * 60, -(-int(rollup_cutoff.timestamp()) // 60) * 60)
    last = int(end.timestamp())
    raw_from = int(raw_cutoff.timestamp()) // 60 * 60  # prune keeps raw minutes from here
    points_per_sample = len(source.services) * len(PROFILES["api"])
    samples_per_batch = max(1, BATCH_POINTS // points_per_sample)
    segments = [(first, min(raw_from, last), max(step, 60)), (max(first, raw_from), last, step)]
    for seg_start, seg_end, seg_step in segments:
        batch_start = seg_start
        while batch_start < seg_end and not report.stopped:
            if stopping():
                report.stopped = True
                break
            # Batches end on whole minutes, so a minute rolled up after one
            # batch gets no later points from the next.
            batch_end = min(batch_start + max(60, samples_per_batch * seg_step // 60 * 60), seg_end)
            times = range(batch_start, batch_end, seg_step)
            store([row for t in times for row in source.rows_at(_at(t))], now=_at(batch_end))
            rollups.roll_up(now=_at(batch_end), chunk=timedelta(hours=6))
            report.points += len(times) * points_per_sample
            if seg_end <= raw_from:
                report.history_points += len(times) * points_per_sample
            batch_start = batch_end
            if progress:
                progress(batch_end - first, last - first)
    if not report.stopped:
        retention.prune()
    report.alerts = Alert.objects.count() - alerts_before
    report.seconds = time.perf_counter() - began
    return report


def _at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)
