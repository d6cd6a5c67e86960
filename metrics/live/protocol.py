"""The /ws/metrics protocol as plain code: subscriptions, client messages, frames, outboxes.

Nothing here touches the network or the event loop, so all of it is tested
directly. metrics.live.fanout drives it: one `Update` per channel-layer message,
one `Outbox` per connection.

Frames are assembled from JSON fragments serialised once per update and per
distinct subscription (`Update.chunk`), so a thousand dashboards watching the
same stream cost one `orjson.dumps` per ingest request, not a thousand.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from metrics.kinds import METRIC_TYPES
from metrics.models import Point
from metrics.points import PointDict, iso

INITIAL_POINTS = 50
# Largest number of points put in one {"type": "metrics"} frame; a bigger
# backlog goes out as several frames in the same flush.
BATCH_FRAME_POINTS = 1000

# Seconds between {"type": "summary"} frames a summary subscription may ask for.
SUMMARY_INTERVALS = (1, 5, 10)
MODES = ("points", "batch", "summary")

SubKey = tuple[frozenset[str] | None, frozenset[str] | None]


@dataclass
class Subscription:
    services: frozenset[str] | None = None
    metric_types: frozenset[str] | None = None
    batch: bool = False
    interval: int | None = None  # set: summary mode, one {"type": "summary"} frame per interval

    @property
    def key(self) -> SubKey:
        return (self.services, self.metric_types)

    @property
    def mode(self) -> str:
        return "summary" if self.interval is not None else "batch" if self.batch else "points"

    def matches(self, item: dict[str, Any]) -> bool:
        return (self.services is None or item["service"] in self.services) and (
            self.metric_types is None or item["metric_type"] in self.metric_types
        )


def latest_points(n: int = INITIAL_POINTS) -> list[PointDict]:
    """The snapshot sent on connect: the latest n points, oldest first."""
    rows = list(Point.objects.order_by("-timestamp", "-id")[:n])
    return [p.to_dict() for p in reversed(rows)]


def initial_frame(points: list[PointDict]) -> str:
    return encode({"type": "initial", "data": points})


def encode(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


# --- Client messages ------------------------------------------------------------


def _names(raw: Any, field: str, allowed: tuple[str, ...] | None = None) -> frozenset[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ValueError(f"'{field}' must be an array of strings or null")
    if allowed is not None:
        bad = [x for x in raw if x not in allowed]
        if bad:
            raise ValueError(f"unknown {field} value {bad[0][:32]!r}; expected one of {', '.join(allowed)}")
    return frozenset(raw) if raw else None


def error(message: str) -> dict[str, Any]:
    return {"type": "error", "error": message}


def handle_client_message(sub: Subscription, text: str | None, data: bytes | None) -> dict[str, Any]:
    """Apply one client message to `sub` and return the reply frame.

    Every message gets an answer: `subscribed`, `unsubscribed`, `pong` or
    `error` (the connection stays open after an error).
    """
    try:
        msg = orjson.loads(text if text is not None else (data or b""))
    except orjson.JSONDecodeError:
        return error("invalid JSON")
    if not isinstance(msg, dict):
        return error("expected a JSON object with an 'action'")
    action = msg.get("action")
    if action == "ping":
        reply = {"type": "pong", "server_time": iso(datetime.now(UTC))}
        if "id" in msg:
            reply["id"] = msg["id"]
        return reply
    if action == "subscribe":
        try:
            services = _names(msg.get("services"), "services")
            metric_types = _names(msg.get("metric_types"), "metric_types", METRIC_TYPES)
        except ValueError as exc:
            return error(str(exc))
        batch = msg.get("batch", False)
        if not isinstance(batch, bool):
            return error("'batch' must be a boolean")
        mode = msg.get("mode")
        if mode is None:
            mode = "batch" if batch else "points"
        elif mode not in MODES:
            return error(f"unknown mode {str(mode)[:32]!r}; expected one of {', '.join(MODES)}")
        interval = None
        if mode == "summary":
            interval = msg.get("interval", SUMMARY_INTERVALS[0])
            if type(interval) is not int or interval not in SUMMARY_INTERVALS:
                allowed = ", ".join(map(str, SUMMARY_INTERVALS))
                return error(f"'interval' must be one of {allowed} (seconds)")
        sub.services, sub.metric_types = services, metric_types
        sub.batch, sub.interval = mode == "batch", interval
        return {
            "type": "subscribed",
            "services": sorted(services) if services else None,
            "metric_types": sorted(metric_types) if metric_types else None,
            "batch": sub.batch,
            "mode": mode,
            "interval": interval,
        }
    if action == "unsubscribe":
        sub.services = sub.metric_types = None
        sub.batch = False
        sub.interval = None
        return {"type": "unsubscribed"}
    return error(f"unknown action {str(action)[:32]!r}; expected subscribe, unsubscribe or ping")


# --- Updates and frames -------------------------------------------------------------


class Update:
    """One broadcast message (one ingest request), serialised lazily per subscription."""

    __slots__ = ("points", "alerts", "_chunks", "_singles", "_alerts")

    def __init__(self, points: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> None:
        self.points = points
        self.alerts = alerts
        self._chunks: dict[SubKey, tuple[bytes, int]] = {}
        self._singles: dict[SubKey, tuple[bytes, ...]] = {}
        self._alerts: dict[SubKey, tuple[bytes, ...]] = {}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Update:
        return cls(list(message.get("points") or ()), list(message.get("alerts") or ()))

    def _matching(self, items: list[dict[str, Any]], sub: Subscription) -> list[dict[str, Any]]:
        if sub.services is None and sub.metric_types is None:
            return items
        return [item for item in items if sub.matches(item)]

    def chunk(self, sub: Subscription) -> tuple[bytes, int]:
        """Matching points as comma-separated JSON objects (no brackets), and how many."""
        key = sub.key
        found = self._chunks.get(key)
        if found is None:
            points = self._matching(self.points, sub)
            found = (orjson.dumps(points)[1:-1], len(points))
            self._chunks[key] = found
        return found

    def singles(self, sub: Subscription) -> tuple[bytes, ...]:
        """Matching points as complete {"type": "metric"} frames."""
        key = sub.key
        found = self._singles.get(key)
        if found is None:
            found = tuple(
                b'{"type":"metric","data":' + orjson.dumps(p) + b"}" for p in self._matching(self.points, sub)
            )
            self._singles[key] = found
        return found

    def alert_frames(self, sub: Subscription) -> tuple[bytes, ...]:
        key = sub.key
        found = self._alerts.get(key)
        if found is None:
            found = tuple(b'{"type":"alert","data":' + orjson.dumps(a) + b"}" for a in self._matching(self.alerts, sub))
            self._alerts[key] = found
        return found


def batch_frames(chunks: list[tuple[bytes, int]], max_points: int = BATCH_FRAME_POINTS) -> list[bytes]:
    """Join point chunks into {"type": "metrics", "data": [...]} frames of about max_points each."""
    frames: list[bytes] = []
    current: list[bytes] = []
    count = 0
    for body, n in chunks:
        if not n:
            continue
        if current and count + n > max_points:
            frames.append(b'{"type":"metrics","data":[' + b",".join(current) + b"]}")
            current, count = [], 0
        current.append(body)
        count += n
    if current:
        frames.append(b'{"type":"metrics","data":[' + b",".join(current) + b"]}")
    return frames


def lag_frame(dropped: int) -> bytes:
    return orjson.dumps({"type": "lag", "dropped": dropped})


class Outbox:
    """What one connection has yet to receive: bounded, oldest dropped first.

    Points are held as the per-update pieces `Update` made for this
    connection's subscription (shared with every other connection that has the
    same subscription), so a full outbox costs references, not copies. When more
    than `max_points` points wait, whole updates are dropped from the old end
    and counted; the next flush starts with {"type": "lag", "dropped": N}.
    Alerts wait in their own short queue so a flood of points cannot push an
    alert change out. A summary subscription holds at most one summary frame:
    a newer one replaces it and counts as one dropped update, so a slow client
    gets the lag notice and then the latest summary.
    """

    def __init__(self, max_points: int = 5000, max_alerts: int = 100) -> None:
        self.subscription = Subscription()
        self.max_points = max_points
        self.items: deque[tuple[Any, int]] = deque()
        self.alerts: deque[bytes] = deque()
        self.max_alerts = max_alerts
        self.waiting = 0
        self.dropped = 0
        self.summary: bytes | None = None

    def __bool__(self) -> bool:
        return bool(self.items or self.alerts or self.dropped or self.summary)

    def offer_summary(self, frame: bytes) -> None:
        """Hold the latest summary frame; one that was still waiting is replaced and counted as dropped."""
        if self.summary is not None:
            self.dropped += 1
        self.summary = frame

    def offer(self, update: Update) -> bool:
        """Queue what `update` holds for this subscription; True when something was queued."""
        sub = self.subscription
        queued = False
        if sub.interval is not None:
            pass  # summary mode: points reach this client through the hub's aggregator, alerts below
        elif sub.batch:
            body, n = update.chunk(sub)
            if n:
                self.items.append((body, n))
                self.waiting += n
                queued = True
        else:
            singles = update.singles(sub)
            if singles:
                self.items.append((singles, len(singles)))
                self.waiting += len(singles)
                queued = True
        while self.waiting > self.max_points and len(self.items) > 1:
            _, n = self.items.popleft()
            self.waiting -= n
            self.dropped += n
        for frame in update.alert_frames(sub):
            if len(self.alerts) >= self.max_alerts:
                self.alerts.popleft()
                self.dropped += 1
            self.alerts.append(frame)
            queued = True
        return queued

    def clear(self) -> None:
        """Forget queued updates (the subscription changed: they were filtered for the old one)."""
        self.items.clear()
        self.alerts.clear()
        self.waiting = 0
        self.summary = None

    def take(self) -> list[bytes]:
        """Everything due, as frames in order: lag notice, points, summary, alerts. Empties the outbox."""
        frames: list[bytes] = []
        if self.dropped:
            frames.append(lag_frame(self.dropped))
            self.dropped = 0
        if self.items:
            # clear() runs on every subscription change, so all items share the current mode.
            if self.subscription.batch:
                frames.extend(batch_frames(list(self.items)))
            else:
                for singles, _ in self.items:
                    frames.extend(singles)
            self.items.clear()
            self.waiting = 0
        if self.summary is not None:
            frames.append(self.summary)
            self.summary = None
        if self.alerts:
            frames.extend(self.alerts)
            self.alerts.clear()
        return frames


class Throttle:
    """Coalescing: a token bucket of flushes, one token per `interval`, holding at most `burst`.

    An idle connection flushes at once; under load it flushes once per
    interval, gathering what arrived meanwhile. The spare token absorbs jitter
    when updates come about one interval apart: a strict "one flush per
    interval since the last" would push every later flush back by the worst
    jitter seen, for good.
    """

    def __init__(self, interval: float, burst: int = 2) -> None:
        self.interval = interval
        self.burst = burst
        self.tokens = float(burst)
        self.at: float | None = None

    def _refill(self, now: float) -> None:
        if self.at is not None and self.interval > 0:
            self.tokens = min(self.burst, self.tokens + (now - self.at) / self.interval)
        self.at = now

    def delay(self, now: float) -> float:
        """Seconds to wait before the next flush may go (0 when a token is there)."""
        if self.interval <= 0:
            return 0.0
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) * self.interval

    def flushed(self, now: float) -> None:
        self._refill(now)
        self.tokens = max(0.0, self.tokens - 1)


class RateLimit:
    """Token bucket for client messages: `per_second` on average, bursts up to twice that."""

    def __init__(self, per_second: float) -> None:
        self.rate = per_second
        self.capacity = 2 * per_second
        self.tokens = self.capacity
        self.at: float | None = None

    def allow(self, now: float) -> bool:
        if self.at is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
