"""Publishing accepted points and alert changes to WebSocket clients.

One message per accepted request (`{"type": "metrics.batch", "points", "alerts"}`),
published after commit and never awaited by the ingest answer:

- In-memory layer: the message goes straight to this process's fan-out hub
  (metrics.live.fanout), the only listener that layer can have. Going through
  `group_send` would deep-copy it per group member for nothing.
- Any other layer (Redis): a per-loop publisher sends the messages one after
  another with `group_send`, so their order is kept and a slow layer backs up
  a bounded queue instead of the ingest path. What waits in the queue when a
  send starts leaves merged, as one message (a writer group's requests are
  announced in one loop iteration, so they travel together, as in memory). A failure (Redis down, timeout)
  is logged, counted in metrics.stats and makes /metrics/health report the
  channel layer as degraded; ingestion answers exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from typing import Any

from channels.layers import get_channel_layer

from metrics import stats
from metrics.live import fanout

log = logging.getLogger(__name__)
GROUP = fanout.GROUP
SEND_TIMEOUT = 2.0
# After a failure, messages published within this many seconds are dropped
# (and counted) instead of each waiting out SEND_TIMEOUT against a dead layer.
RETRY_AFTER = 1.0
MAX_BACKLOG = 1000
# Points in one merged message: a few hundred kilobytes through Redis at most.
MAX_MERGED_POINTS = 5000
DEGRADED_FOR_SECONDS = 30.0


def message(points: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": fanout.MESSAGE_TYPE, "points": points, "alerts": alerts}


def _failed(reason: str, dropped: int = 0) -> None:
    stats.broadcast_failures.inc()
    if dropped:
        stats.broadcast_dropped.inc(dropped)
    stats.mark("broadcast_failure")
    log.warning("broadcast failed: %s", reason)


async def send(msg: dict[str, Any], requests: int = 1) -> bool:
    """group_send one message (carrying `requests` requests' announcements) with a timeout; report, never raise."""
    layer = get_channel_layer()
    if layer is None:
        return True
    try:
        await asyncio.wait_for(layer.group_send(GROUP, msg), SEND_TIMEOUT)
    except Exception as exc:  # any layer failure is reported, never raised into ingestion
        _failed(f"{type(exc).__name__}: {exc}", dropped=requests)
        return False
    stats.broadcasts.inc()
    return True


async def publish(points: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> bool:
    """Publish and wait for it (tests, scripts). Ingestion uses publish_soon."""
    if not points and not alerts:
        return True
    msg = message(points, alerts)
    if fanout.local_delivery():
        fanout.hub().dispatch(msg)
        stats.broadcasts.inc()
        return True
    return await send(msg)


class _Publisher:
    """Sends this loop's messages to the layer one at a time, from a bounded queue."""

    def __init__(self) -> None:
        self.queue: deque[dict[str, Any]] = deque()
        self.task: asyncio.Task | None = None

    def put(self, msg: dict[str, Any]) -> None:
        if len(self.queue) >= MAX_BACKLOG:
            _failed(f"publish backlog full ({MAX_BACKLOG} messages)", dropped=1)
            return
        self.queue.append(msg)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self.queue:
                since = stats.seconds_since("broadcast_failure")
                if since is not None and since < RETRY_AFTER:
                    dropped = len(self.queue)
                    self.queue.clear()
                    stats.broadcast_dropped.inc(dropped)
                    break
                await send(*self._take())
        finally:
            self.task = None

    def _take(self) -> tuple[dict[str, Any], int]:
        """The oldest message and those queued behind it, merged in order (up to MAX_MERGED_POINTS points).

        Through Redis every request used to be its own message, and so its own
        frame to every client: figure 5 on PostgreSQL + Redis sent ~1.8x the
        frames per point the in-memory layer needed and saturated the loop.
        """
        first = self.queue.popleft()
        if not self.queue or len(first["points"]) + len(self.queue[0]["points"]) > MAX_MERGED_POINTS:
            return first, 1
        points, alerts, taken = list(first["points"]), list(first["alerts"]), 1
        while self.queue and len(points) + len(self.queue[0]["points"]) <= MAX_MERGED_POINTS:
            queued = self.queue.popleft()
            points += queued["points"]
            alerts += queued["alerts"]
            taken += 1
        return message(points, alerts), taken


_publishers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Publisher] = weakref.WeakKeyDictionary()


def _publisher() -> _Publisher:
    loop = asyncio.get_running_loop()
    found = _publishers.get(loop)
    if found is None:
        found = _publishers[loop] = _Publisher()
    return found


def _publish_on_loop(msg: dict[str, Any]) -> None:
    if fanout.local_delivery():
        fanout.hub().dispatch(msg)
        stats.broadcasts.inc()
    else:
        _publisher().put(msg)


def on_committed(sender: Any, points: list[dict[str, Any]], alerts: list[dict[str, Any]], **kwargs: Any) -> None:
    """Receiver of metrics.events.committed (connected in MetricsConfig.ready): publish what was committed."""
    publish_soon(points, alerts)


def publish_soon(points: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> None:
    """Hand one request's points and alert changes to the broadcast without waiting for it."""
    if not points and not alerts:
        return
    msg = message(points, alerts)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        # A worker thread (a sync view) or a management command writing in process.
        serving = fanout.serving_loop()
        if serving is not None:
            serving.call_soon_threadsafe(_publish_on_loop, msg)
        elif not fanout.local_delivery():
            asyncio.run(send(msg))
        # else: in-memory layer and no server loop in this process: nobody could receive it.
        return
    _publish_on_loop(msg)


def degraded() -> bool:
    since = stats.seconds_since("broadcast_failure")
    return since is not None and since < DEGRADED_FOR_SECONDS


async def probe(timeout: float = 1.0) -> str:
    """'ok' or a short reason: used by /metrics/health."""
    layer = get_channel_layer()
    if layer is None:
        return "not configured"
    try:
        await asyncio.wait_for(layer.group_send("health-probe", {"type": "health.probe"}), timeout)
    except Exception as exc:
        stats.mark("broadcast_failure")
        return f"degraded: {type(exc).__name__}"
    if degraded():
        return "degraded: recent broadcast failures"
    return "ok"


def streaming_stats() -> dict[str, Any]:
    """Live-streaming state of this process, for /metrics/health."""
    hub = fanout.hub()
    publisher = _publishers.get(asyncio.get_running_loop())
    try:
        members = hub.group_members()
    except Exception:  # a layer without inspectable groups
        members = None
    return {
        "connections": len(hub.connections),
        "group_members": members,
        "publish_backlog": len(publisher.queue) if publisher else 0,
        "summary": hub.summary.status(),
    }
