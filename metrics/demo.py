"""Synthetic but realistic service metrics for the demo generator.

Each service has a base profile; values follow a daily cycle, noise, rare
spikes and occasional incidents (a few minutes of high latency and errors,
low throughput) that open alerts and later resolve them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime

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
