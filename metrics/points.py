"""What a point is and how it is spelled, for the write path and the read path alike.

`Row` is a validated point (metrics/ingest/validation.py makes them; storage,
alerts and rollups take them); `PointDict` is a point on the wire; `iso()` and
`parse_timestamp()` are the one timestamp spelling, out and in; SERVICE_RE is
the service-name rule. Queries, the dashboard's URL parsing and ingestion all
use these, so reads need not import the write path.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypedDict

SERVICE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Row(NamedTuple):
    """A validated point. Immutable; a named tuple because a batch builds a thousand of them
    per request and a frozen dataclass's __init__ cost three times as much."""

    timestamp: datetime
    service: str
    metric_type: str
    value: float
    tags: dict[str, Any]


class PointDict(TypedDict):
    timestamp: str
    service: str
    metric_type: str
    value: float
    tags: dict


def iso(dt: datetime | None) -> str | None:
    """ISO-8601 in UTC with a trailing Z, the one timestamp spelling on the wire."""
    if dt is None:
        return None
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC)
    text = dt.replace(tzinfo=None).isoformat()
    return text + "Z"


_ts_cache: dict[str, datetime] = {}

UNPARSEABLE_TIMESTAMP = "unparseable; use ISO-8601 like 2024-01-01T12:00:00Z"
NAIVE_IS_UTC = "naive timestamps (no Z or offset) are read as UTC; add Z or your offset, such as +09:00"


class TimestampError(ValueError):
    """A timestamp that parses but cannot be used; its text is the message for the client."""


def timestamp_problem(exc: Exception) -> str:
    return str(exc) if isinstance(exc, TimestampError) else UNPARSEABLE_TIMESTAMP


def is_naive(raw: Any) -> bool:
    """Whether `raw` is an ISO-8601 text without a zone (numbers are Unix seconds, always UTC)."""
    if not isinstance(raw, str):
        return False
    try:
        return datetime.fromisoformat(raw.strip()).tzinfo is None
    except ValueError:
        return False


def parse_timestamp(raw: Any) -> datetime:
    """An aware UTC datetime; ValueError (TimestampError with a message) when it cannot be one."""
    if isinstance(raw, str):
        cached = _ts_cache.get(raw)
        if cached is not None:
            return cached
        text = raw.strip()
        if not text or len(text) > 40:
            raise ValueError("not an ISO-8601 timestamp")
        dt = datetime.fromisoformat(text)
        try:
            dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
        except OverflowError:
            # 0001-01-01T00:00:00+01:00 is in year 0 in UTC, which datetime cannot hold.
            raise TimestampError("out of range: outside the years 1-9999 in UTC") from None
        if len(_ts_cache) > 4096:
            _ts_cache.clear()
        _ts_cache[raw] = dt
        return dt
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        # Unix seconds: what many agents send. Milliseconds are a common mistake,
        # so values that only make sense as ms are rejected, not misread.
        if not math.isfinite(raw) or raw < 0 or raw > 1e11:
            raise TimestampError("numeric timestamps are Unix seconds, between 0 and 1e11")
        return datetime.fromtimestamp(raw, tz=UTC)
    raise ValueError("expected an ISO-8601 string")
