"""Committed changes the live stream shows: the one hook between the code that writes and metrics/live.

Writers (ingest's submit, the anomaly detector, alert actions on the
dashboard) call `announce()` once their transaction has committed, or
`announce_on_commit()` inside it; metrics/live connects `committed` in
MetricsConfig.ready and turns each announcement into one broadcast message.
So ingest and alerts never import live, and live imports none of them.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.dispatch import Signal

# Sent with points=[PointDict, ...] and alerts=[AlertDict, ...], once per committed request or change.
committed = Signal()


def announce(points: list[Any], alerts: list[Any]) -> None:
    """Tell live listeners about committed points and alert changes (call after COMMIT)."""
    if points or alerts:
        committed.send(sender=None, points=points, alerts=alerts)


def announce_on_commit(points: list[Any], alerts: list[Any]) -> None:
    """announce() when the current transaction commits (at once outside one)."""
    transaction.on_commit(lambda: announce(points, alerts))
