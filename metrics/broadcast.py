"""Publishing accepted points and alert changes to the channel layer.

One group message per accepted request, sent after commit, fire-and-forget:
a slow or dead channel layer (Redis down, capacity full) is logged, counted
and reported by /metrics/health, and never fails or slows the ingest answer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.layers import get_channel_layer

from . import stats

log = logging.getLogger(__name__)
GROUP = "metrics"
SEND_TIMEOUT = 2.0
DEGRADED_FOR_SECONDS = 30.0
_pending: set[asyncio.Task] = set()


def message(points: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "metrics.batch", "points": points, "alerts": alerts}


async def publish(points: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> bool:
    layer = get_channel_layer()
    if layer is None or (not points and not alerts):
        return True
    try:
        await asyncio.wait_for(layer.group_send(GROUP, message(points, alerts)), SEND_TIMEOUT)
    except Exception as exc:  # any layer failure is reported, never raised into ingestion
        stats.inc("broadcast_failures")
        stats.mark("broadcast_failure")
        log.warning("broadcast failed: %s: %s", type(exc).__name__, exc)
        return False
    stats.inc("broadcasts")
    return True


def publish_soon(points: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> None:
    """Schedule publish on the running loop without waiting for it."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        # Called outside an event loop (management command writing in process):
        # deliver synchronously with the same timeout.
        asyncio.run(publish(points, alerts))
        return
    task = loop.create_task(publish(points, alerts))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


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
