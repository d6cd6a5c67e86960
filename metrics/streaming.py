"""WebSocket protocol logic as plain functions: subscriptions, filtering, frames."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .models import METRIC_TYPES, Point, iso


@dataclass
class Subscription:
    services: frozenset[str] | None = None
    metric_types: frozenset[str] | None = None
    batch: bool = False

    def matches(self, point: dict[str, Any]) -> bool:
        return (self.services is None or point["service"] in self.services) and (
            self.metric_types is None or point["metric_type"] in self.metric_types
        )


def latest_points(n: int = 50) -> list[dict[str, Any]]:
    rows = list(Point.objects.order_by("-timestamp", "-id")[:n])
    return [p.to_dict() for p in reversed(rows)]


def _names(raw: Any, field: str, allowed: tuple[str, ...] | None = None) -> frozenset[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ValueError(f"'{field}' must be an array of strings or null")
    if allowed is not None:
        bad = [x for x in raw if x not in allowed]
        if bad:
            raise ValueError(f"unknown {field} value {bad[0][:32]!r}")
    return frozenset(raw) if raw else None


def handle_client_message(sub: Subscription, text: str | None, data: bytes | None) -> dict[str, Any] | None:
    """Apply one client message to `sub`; return the reply frame, if any."""
    try:
        msg = orjson.loads(text if text is not None else (data or b""))
    except orjson.JSONDecodeError:
        return {"type": "error", "error": "invalid JSON"}
    if not isinstance(msg, dict):
        return {"type": "error", "error": "expected a JSON object with an 'action'"}
    action = msg.get("action")
    if action == "ping":
        return {"type": "pong", "server_time": iso(datetime.now(UTC)), "id": msg.get("id")}
    if action == "subscribe":
        try:
            services = _names(msg.get("services"), "services")
            metric_types = _names(msg.get("metric_types"), "metric_types", METRIC_TYPES)
        except ValueError as exc:
            return {"type": "error", "error": str(exc)}
        batch = msg.get("batch", False)
        if not isinstance(batch, bool):
            return {"type": "error", "error": "'batch' must be a boolean"}
        sub.services, sub.metric_types, sub.batch = services, metric_types, batch
        return {
            "type": "subscribed",
            "services": sorted(services) if services else None,
            "metric_types": sorted(metric_types) if metric_types else None,
            "batch": batch,
        }
    if action == "unsubscribe":
        sub.services = sub.metric_types = None
        sub.batch = False
        return {"type": "unsubscribed"}
    return {"type": "error", "error": f"unknown action {str(action)[:32]!r}; expected subscribe, unsubscribe or ping"}


def frames_for(sub: Subscription, event: dict[str, Any]) -> list[dict[str, Any]]:
    points = [p for p in event.get("points", ()) if sub.matches(p)]
    frames: list[dict[str, Any]] = []
    if sub.batch:
        if points:
            frames.append({"type": "metrics", "data": points})
    else:
        frames.extend({"type": "metric", "data": p} for p in points)
    for alert in event.get("alerts", ()):
        if sub.matches(alert):
            frames.append({"type": "alert", "data": alert})
    return frames
