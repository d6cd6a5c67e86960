"""Process-local counters: points ingested, rejected, broadcast failures, clients.

Read by /metrics/health and /metrics/prometheus. Plain ints behind a lock: the
hot path increments once per request, not once per point.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

_lock = threading.Lock()
_counters: dict[str, float] = defaultdict(float)
_marks: dict[str, float] = {}


def inc(name: str, amount: float = 1) -> None:
    with _lock:
        _counters[name] += amount


def set_value(name: str, value: float) -> None:
    with _lock:
        _counters[name] = value


def mark(name: str) -> None:
    """Remember when something last happened (e.g. a broadcast failure)."""
    _marks[name] = time.monotonic()


def seconds_since(name: str) -> float | None:
    at = _marks.get(name)
    return None if at is None else time.monotonic() - at


# Request latency histograms (seconds), per route: Prometheus' default buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_latency: dict[str, list[float]] = {}


def observe(name: str, seconds: float) -> None:
    """Count one duration: per-bucket counts (not cumulative), then count and sum."""
    with _lock:
        row = _latency.get(name)
        if row is None:
            row = _latency[name] = [0.0] * (len(LATENCY_BUCKETS) + 3)
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                row[i] += 1
                break
        else:
            row[len(LATENCY_BUCKETS)] += 1
        row[-2] += 1
        row[-1] += seconds


def latencies() -> dict[str, list[float]]:
    """name -> bucket counts (len(LATENCY_BUCKETS) + 1 for +Inf), count, sum."""
    with _lock:
        return {name: list(row) for name, row in _latency.items()}


def snapshot() -> dict[str, float]:
    with _lock:
        return dict(_counters)


def reset() -> None:
    with _lock:
        _counters.clear()
        _marks.clear()
        _latency.clear()
