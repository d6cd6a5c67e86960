"""The HTTP API Django serves under /metrics/: query, services, alerts, health and the ping baseline.

Ingestion (POST /metrics/ingest, /v1/metrics) is not here: it is the ingest
ASGI app (metrics/api/ingest_app.py), routed before Django in asgi.py. Views
raise ApiError for a refusal; api_view renders it (and a database that does
not answer) in the one JSON error shape.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from metrics import stats
from metrics.api.access import api_access
from metrics.api.errors import FastJsonResponse, api_view, json_body
from metrics.dbwork import unit_of_work_starts
from metrics.errors import ApiError, error_item
from metrics.ingest.validation import parse_json
from metrics.ingest.writer import answer_seconds
from metrics.live import publish
from metrics.models import Alert, Service
from metrics.points import iso
from metrics.series import query


def _on_pooled_thread(func: Any) -> Any:
    """Run database reads on a reused worker thread that keeps its connection.

    sync_to_async's thread-sensitive default gives every request a new thread
    and so a new database connection (connect plus the PRAGMAs on SQLite): a
    third of a single-point ingest in the profile (docs/performance.md). Pool
    threads keep theirs; unit_of_work_starts() first does what Django does at
    each request start (drop a broken or old connection, clear the query log).
    """

    if not settings.TELEMETRY.get("DB_THREAD_POOL", True):
        return sync_to_async(func)

    def run(*args: Any) -> Any:
        unit_of_work_starts()
        return func(*args)

    return sync_to_async(run, thread_sensitive=False)


def _query_params(request: HttpRequest) -> dict[str, Any]:
    if request.method == "GET":
        params: dict[str, Any] = {}
        for key in request.GET:
            values = request.GET.getlist(key)
            params[key] = values if key in ("services", "metric_types") and len(values) > 1 else values[-1]
        return params
    payload = parse_json(json_body(request) or b"{}")
    if not isinstance(payload, dict):
        raise ApiError(400, "Query must be a JSON object")
    return payload


@csrf_exempt
@api_view("GET", "POST")
async def query_view(request: HttpRequest) -> HttpResponse:
    # Pooled thread: a persistent connection keeps its page cache warm across
    # queries (SQLite's cache is per connection), and no connect per request.
    return await _on_pooled_thread(_query_sync)(request)


@api_access
def _query_sync(request: HttpRequest) -> HttpResponse:
    return FastJsonResponse(query.run(query.parse_query(_query_params(request))))


@api_access
@api_view("GET")
def services_view(request: HttpRequest) -> HttpResponse:
    return FastJsonResponse({"services": query.services_overview()})


ALERT_FILTERS = {"severity": ("warning", "critical"), "state": ("firing", "resolved")}


@api_access
@api_view("GET")
def alerts_view(request: HttpRequest) -> HttpResponse:
    qs = Alert.objects.all()
    details = []
    for name, allowed in ALERT_FILTERS.items():
        value = request.GET.get(name)
        if value:
            if value not in allowed:
                details.append(error_item(None, name, f"must be one of {', '.join(allowed)}"))
            else:
                qs = qs.filter(**{name: value})
    service = request.GET.get("service")
    if service:
        qs = qs.filter(service=service)
    try:
        limit = int(request.GET.get("limit", 10))
        if not 1 <= limit <= 1000:
            raise ValueError
    except ValueError:
        details.append(error_item(None, "limit", "must be an integer between 1 and 1000"))
        limit = 10
    if details:
        raise ApiError(400, "Invalid alert filter", details=details)
    return FastJsonResponse({"alerts": [a.to_dict() for a in qs.order_by("-started_at", "-id")[:limit]]})


def _database_check() -> tuple[str, int]:
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
        return "ok", Service.objects.count()
    except Exception as exc:
        return f"error: {type(exc).__name__}", 0


class RecentCheck:
    """A check's last result, reused for a short while; concurrent callers share one run.

    Load balancers and orchestrators poll health from many places at once;
    without this, 50 concurrent polls made 50 database round trips and 50
    channel-layer round trips, and health answered 3x slower than the older
    service it replaces.
    """

    def __init__(self) -> None:
        self.value: dict[str, Any] | None = None
        self.at = float("-inf")
        self._pending: dict[asyncio.AbstractEventLoop, asyncio.Task[dict[str, Any]]] = {}

    def clear(self) -> None:
        self.value, self.at = None, float("-inf")

    async def get(self, run: Any) -> dict[str, Any]:
        ttl = settings.TELEMETRY.get("HEALTH_CACHE_SECONDS", 2.0)
        now = time.monotonic()
        failed = stats.seconds_since("db_unavailable")
        if failed is not None and now - failed >= self.at:
            self.clear()  # a request found the database unavailable since: fresher news than a cached "ok"
        if self.value is not None and now - self.at < ttl:
            return self.value
        loop = asyncio.get_running_loop()
        task = self._pending.get(loop)
        if task is None:
            task = self._pending[loop] = loop.create_task(self._refresh(run))
            task.add_done_callback(lambda _: self._pending.pop(loop, None))
        return await asyncio.shield(task)

    async def _refresh(self, run: Any) -> dict[str, Any]:
        value = await run()
        # Only a healthy answer is reused: a failing check runs again on the
        # next poll, so recovery shows at once (concurrent polls still share it).
        if value["database"] == "ok" and value["channel_layer"] == "ok":
            self.value, self.at = value, time.monotonic()
        return value


recent_health = RecentCheck()


async def _run_health_checks() -> dict[str, Any]:
    try:
        db_status, services_count = await asyncio.wait_for(_on_pooled_thread(_database_check)(), answer_seconds())
    except TimeoutError:
        db_status, services_count = "error: no answer from the database", 0
    return {"database": db_status, "services_count": services_count, "channel_layer": await publish.probe()}


@api_view("GET")
async def health(request: HttpRequest) -> HttpResponse:
    if publish.degraded():
        recent_health.clear()  # a failed broadcast is fresher news than a cached "ok"
    checks = await recent_health.get(_run_health_checks)
    healthy = checks["database"] == "ok"
    body = {
        "status": ("healthy" if checks["channel_layer"] == "ok" else "degraded") if healthy else "unhealthy",
        "timestamp": iso(datetime.now(UTC)),
        "services_count": checks["services_count"],
        "checks": {"database": checks["database"], "channel_layer": checks["channel_layer"]},
        "streaming": publish.streaming_stats(),
        "version": settings.TELEMETRY["VERSION"],
    }
    return FastJsonResponse(body, status=200 if healthy else 503)


@api_view("GET")
def ping(request: HttpRequest) -> HttpResponse:
    """A trivial JSON view: the benchmark's baseline for per-request overhead."""
    return FastJsonResponse({"status": "ok"})
