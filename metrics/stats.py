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


def snapshot() -> dict[str, float]:
    with _lock:
        return dict(_counters)


def reset() -> None:
    with _lock:
        _counters.clear()
        _marks.clear()
