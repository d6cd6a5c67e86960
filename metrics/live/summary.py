"""Summary subscriptions: per-series statistics once per tick instead of every point.

A client that subscribes with `"mode": "summary", "interval": N` receives one
`{"type": "summary", ...}` frame every N seconds (aligned to the wall clock),
holding count, min, max, mean, last and p95 of each series (service,
metric_type) over the points this process's hub received in that window,
filtered by the client's services and metric types. The frame goes out every
tick, with an empty `series` list when nothing matched, so a client can tell a
quiet stream from a missed tick.

The cost is per series and per distinct filter, not per point and per client:

- One `Aggregator` per hub (per process) collects every published point's value
  by series, once per active interval (1, 5 or 10 s), whatever the number of
  subscribers.
- At a tick each series' statistics are computed once (p95 from the rollups'
  percentile sketch, `metrics.series.sketch`, with its 1 % relative accuracy,
  clamped to the observed min and max), and the frame of each distinct filter
  is encoded once (`Tick.frame`, cached by filter key): a thousand dashboards
  with one filter cost one `orjson.dumps`. Each connection then only queues a
  reference to those bytes.

Plain code: `metrics.live.fanout.Hub` drives it from its event loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from typing import Any, Protocol

import numpy as np
import orjson

from metrics import stats
from metrics.live.protocol import SubKey, Subscription
from metrics.points import iso
from metrics.series import sketch

QUANTILE = 0.95
SeriesKey = tuple[str, str]


class Subscriber(Protocol):
    @property
    def subscription(self) -> Subscription: ...

    def offer_summary(self, frame: bytes) -> None: ...


def wall_iso(seconds: float) -> str:
    return iso(datetime.fromtimestamp(seconds, UTC)) or ""


def series_stats(values: dict[SeriesKey, list[float]]) -> list[dict[str, Any]]:
    """count, min, max, mean, last and p95 of each series, sorted by (service, metric_type).

    Vectorised over all series at once, except the sketch of each series (one
    `sketch.encode` per series; one `grouped_quantiles` for all of them).
    """
    keys = sorted(k for k, v in values.items() if v)
    if not keys:
        return []
    lists = [values[k] for k in keys]
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    flat = np.fromiter(chain.from_iterable(lists), dtype=np.float64, count=int(lengths.sum()))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    mins = np.minimum.reduceat(flat, starts)
    maxs = np.maximum.reduceat(flat, starts)
    sums = np.add.reduceat(flat, starts)
    blobs = [sketch.encode(flat[a : a + n]) for a, n in zip(starts.tolist(), lengths.tolist(), strict=True)]
    p95 = sketch.grouped_quantiles(blobs, np.arange(len(keys)), len(keys), [QUANTILE], mins, maxs)[:, 0]
    return [
        {
            "service": service,
            "metric_type": metric_type,
            "count": count,
            "min": lo,
            "max": hi,
            "mean": total / count,
            "last": series[-1],
            "p95": q,
        }
        for (service, metric_type), series, count, lo, hi, total, q in zip(
            keys,
            lists,
            lengths.tolist(),
            mins.tolist(),
            maxs.tolist(),
            sums.tolist(),
            p95.tolist(),
            strict=True,
        )
    ]


@dataclass
class Window:
    """What one interval has gathered since `start`; closes at `end` (a multiple of the interval)."""

    interval: int
    start: float
    end: float
    values: dict[SeriesKey, list[float]] = field(default_factory=dict)


class Tick:
    """One closed window: statistics computed once, frames encoded once per distinct filter."""

    def __init__(self, window: Window) -> None:
        self.interval = window.interval
        self.start = window.start
        self.end = window.end
        self.series = series_stats(window.values)
        self._head = b'{"type":"summary","start":"%s","end":"%s","interval":%d,"series":' % (
            wall_iso(self.start).encode(),
            wall_iso(self.end).encode(),
            self.interval,
        )
        self.frames: dict[SubKey, bytes] = {}

    def frame(self, sub: Subscription) -> bytes:
        found = self.frames.get(sub.key)
        if found is None:
            matching = (
                self.series
                if sub.services is None and sub.metric_types is None
                else [s for s in self.series if sub.matches(s)]
            )
            found = self.frames[sub.key] = self._head + orjson.dumps(matching) + b"}"
            stats.ws_summary_encodes.inc()
        return found


class Aggregator:
    """This process's summary subscribers, by interval, and the window each interval is gathering."""

    def __init__(self) -> None:
        self.subscribers: dict[int, set[Subscriber]] = {}
        self.members: set[Subscriber] = set()  # every summary subscriber, whatever its interval
        self.windows: dict[int, Window] = {}
        self.last_tick: dict[str, Any] = {}
        self.slowest_tick = 0.0  # seconds: statistics, encodes and queueing of one tick, the worst so far

    def __bool__(self) -> bool:
        return bool(self.windows)

    def update(self, conn: Subscriber, now: float) -> None:
        """Register `conn` under its subscription's interval (or nowhere: not a summary subscriber)."""
        self.forget(conn)
        interval = conn.subscription.interval
        if interval is None:
            return
        self.subscribers.setdefault(interval, set()).add(conn)
        self.members.add(conn)
        if interval not in self.windows:
            self.windows[interval] = Window(interval, now, _boundary(now, interval) + interval)

    def forget(self, conn: Subscriber) -> None:
        self.members.discard(conn)
        for interval in [i for i, conns in self.subscribers.items() if conn in conns]:
            conns = self.subscribers[interval]
            conns.discard(conn)
            if not conns:
                del self.subscribers[interval]
                del self.windows[interval]

    def add(self, points: list[dict[str, Any]]) -> None:
        """Gather one published message's points into every open window."""
        if not self.windows or not points:
            return
        grouped: dict[SeriesKey, list[float]] = {}
        for p in points:
            key = (p["service"], p["metric_type"])
            found = grouped.get(key)
            if found is None:
                grouped[key] = [p["value"]]
            else:
                found.append(p["value"])
        for window in self.windows.values():
            values = window.values
            for key, vals in grouped.items():
                found = values.get(key)
                if found is None:
                    values[key] = list(vals)
                else:
                    found.extend(vals)

    def next_due(self) -> float | None:
        return min((w.end for w in self.windows.values()), default=None)

    def close_due(self, now: float) -> list[Tick]:
        """Close every window whose end has passed and open the next one.

        A tick that comes late (a stalled event loop) closes its window at the
        latest boundary passed, so one frame covers the whole stalled span:
        `end - start` is then a multiple of the interval, and no frame is
        invented for the seconds nobody measured.
        """
        ticks = []
        for interval, window in list(self.windows.items()):
            if window.end > now:
                continue
            window.end = max(window.end, _boundary(now, interval))
            self.windows[interval] = Window(interval, window.end, window.end + interval)
            ticks.append(Tick(window))
        return ticks

    def tick(self, now: float) -> None:
        """Close what is due at `now` and queue the frames, timing the work."""
        started = time.perf_counter()
        for tick in self.close_due(now):
            self.deliver(tick)
            took = time.perf_counter() - started
            self.last_tick["seconds"] = round(took, 6)
            self.slowest_tick = max(self.slowest_tick, took)

    def deliver(self, tick: Tick) -> None:
        """Queue the tick's frame on each of its subscribers: one encode per distinct filter."""
        conns = self.subscribers.get(tick.interval, ())
        for conn in conns:
            conn.offer_summary(tick.frame(conn.subscription))
        stats.ws_summary_frames.inc(len(conns))
        self.last_tick = {"interval": tick.interval, "subscribers": len(conns), "frames_encoded": len(tick.frames)}

    def status(self) -> dict[str, Any]:
        return {
            "subscribers": sum(len(c) for c in self.subscribers.values()),
            "last_tick": self.last_tick or None,
            "slowest_tick_seconds": round(self.slowest_tick, 6),
        }


def _boundary(now: float, interval: int) -> float:
    """The latest multiple of `interval` seconds at or before `now`."""
    return float(math.floor(now / interval) * interval)
