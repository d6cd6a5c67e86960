"""What the user is looking at: a time range and an optional set of services, both from the URL.

`?range=6h&services=api,auth` (or repeated `services=`) is shared by the
pages, their fragments and the chart data endpoints, so a view can be
bookmarked and every request for it queries the same window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from django.http import HttpRequest

from metrics.points import SERVICE_RE

RANGES: dict[str, int] = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600, "7d": 7 * 24 * 3600}
DEFAULT_RANGE = "1h"
MAX_SERVICES = 50


class BadSelection(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Selection:
    range_key: str
    services: tuple[str, ...]  # empty = every service
    now: datetime

    @property
    def seconds(self) -> int:
        return RANGES[self.range_key]

    @property
    def end(self) -> datetime:
        return self.now

    @property
    def start(self) -> datetime:
        return self.now - timedelta(seconds=self.seconds)

    @property
    def previous_start(self) -> datetime:
        return self.start - timedelta(seconds=self.seconds)

    @property
    def service_list(self) -> list[str] | None:
        return list(self.services) or None

    def query_string(self, **overrides: str) -> str:
        params = {"range": self.range_key}
        if self.services:
            params["services"] = ",".join(self.services)
        params.update(overrides)
        return urlencode(params)


def _raw_services(request: HttpRequest) -> list[str]:
    names: list[str] = []
    for value in request.GET.getlist("services"):
        names.extend(part.strip() for part in value.split(",") if part.strip())
    return list(dict.fromkeys(names))


def from_request(request: HttpRequest, strict: bool = False, now: datetime | None = None) -> Selection:
    """The selection in the request. Pages fall back to defaults on bad values; `strict` raises BadSelection."""
    now = now or datetime.now(UTC)
    range_key = request.GET.get("range") or DEFAULT_RANGE
    if range_key not in RANGES:
        if strict:
            raise BadSelection("range", f"must be one of {', '.join(RANGES)}")
        range_key = DEFAULT_RANGE
    services = _raw_services(request)
    bad = [s for s in services if not SERVICE_RE.fullmatch(s)]
    if bad and strict:
        raise BadSelection("services", f"invalid service name {bad[0][:64]!r}")
    services = [s for s in services if SERVICE_RE.fullmatch(s)][:MAX_SERVICES]
    return Selection(range_key, tuple(services), now)
