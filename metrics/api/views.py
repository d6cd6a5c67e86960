"""HTTP API under /metrics/: small views that orchestrate validation, storage and answers."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, OperationalError, close_old_connections, connection
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from metrics import events, stats
from metrics.api.access import api_access
from metrics.api.errors import (
    FastJsonResponse,
    authenticate_key,
    credentials,
    error,
    error_from,
    json_body,
    require_methods,
)
from metrics.errors import ValidationErrors, error_item
from metrics.ingest.store import store
from metrics.ingest.validation import extract_points, parse_json, validate_points
from metrics.ingest.writer import answer_seconds, write
from metrics.live import publish as broadcast
from metrics.models import Alert, Service
from metrics.points import iso
from metrics.series import query


def _db_unavailable(exc: Exception) -> HttpResponse:
    stats.inc("db_unavailable")
    recent_health.clear()  # fresher news than a cached "ok"
    response = error(f"Database unavailable: {type(exc).__name__}; retry shortly", 503, field="database")
    response["Retry-After"] = "2"
    return response


def _check_services_allowed(key: Any, rows: list) -> HttpResponse | None:
    if key is None or not key.allowed_services:
        return None
    allowed = key.allowed_services
    for index, row in enumerate(rows):
        if row.service not in allowed:
            return error(
                f"This API key may not write service {row.service!r}",
                403,
                [error_item(index, "service", f"key is limited to {', '.join(sorted(allowed))}")],
            )
    return None


def _store_sync(auth: dict[str, str], rows: list) -> tuple[HttpResponse, Any]:
    """The writer's part of a request: the key (revocation takes effect at once) and the store."""
    key, denied = authenticate_key(auth)
    if denied:
        return denied, None
    forbidden = _check_services_allowed(key, rows)
    if forbidden:
        return forbidden, None
    try:
        result = store(rows)
    except ValidationErrors as exc:
        stats.inc("requests_rejected")
        return error_from(exc), None
    breached = [a.to_dict() for a in result.breached]
    body_out = {
        "status": "success",
        "accepted": result.accepted,
        "alert": breached[0] if breached else None,
        "alerts": breached,
    }
    return FastJsonResponse(body_out), result


def _parse_rows(body: bytes) -> list:
    return validate_points(extract_points(parse_json(body), settings.TELEMETRY["INGEST_MAX_POINTS"]))


# Bodies above this are parsed on a worker thread so a 10,000-point batch
# does not hold the event loop; a single point is cheaper parsed in place.
INLINE_PARSE_BYTES = 64 * 1024


def _on_pooled_thread(func: Any) -> Any:
    """Run database reads on a reused worker thread that keeps its connection.

    sync_to_async's thread-sensitive default gives every request a new thread
    and so a new database connection (connect plus the PRAGMAs on SQLite): a
    third of a single-point ingest in the profile (docs/performance.md). Pool
    threads keep theirs; close_old_connections() first drops one that errored
    or outlived CONN_MAX_AGE, as Django does at each request start.
    """

    if not settings.TELEMETRY.get("DB_THREAD_POOL", True):
        return sync_to_async(func)

    def run(*args: Any) -> Any:
        close_old_connections()
        return func(*args)

    return sync_to_async(run, thread_sensitive=False)


async def ingest_body(auth: dict[str, str], body: bytes) -> HttpResponse:
    """Store one request body and answer it: the work both ingest front doors share.

    Parsing and validation happen here, before the write is queued: the
    writer thread only stores, so an expensive body never stalls the group
    commit everyone else is waiting for.
    """
    if not auth:
        _, denied = authenticate_key(auth)  # without a key this needs no database
        if denied:
            return denied
    try:
        if len(body) > INLINE_PARSE_BYTES:
            rows = await sync_to_async(_parse_rows, thread_sensitive=False)(body)
        else:
            rows = _parse_rows(body)
    except ValidationErrors as exc:
        stats.inc("requests_rejected")
        if auth:
            # A wrong key is the first thing its client must hear, as before.
            _, denied = await _on_pooled_thread(authenticate_key)(auth)
            if denied:
                return denied
        return error_from(exc)
    try:
        response, result = await write(_store_sync, auth, rows, weight=len(body))
    except TimeoutError:
        # A frozen or partitioned database: answer now; the writer guarantees
        # the request never commits.
        return _db_unavailable(TimeoutError("no answer from the database"))
    except (OperationalError, DatabaseError) as exc:
        return _db_unavailable(exc)
    if result is not None:
        # After commit (the group committed), one message for the whole request.
        events.announce(result.points, [a.to_dict() for a in result.changed])
    return response


@csrf_exempt
@require_methods("POST")
async def ingest(request: HttpRequest) -> HttpResponse:
    body, problem = json_body(request)
    if problem:
        return problem
    assert body is not None
    return await ingest_body(credentials(request.headers), body)


def _query_params(request: HttpRequest) -> tuple[dict[str, Any] | None, HttpResponse | None]:
    if request.method == "GET":
        params: dict[str, Any] = {}
        for key in request.GET:
            values = request.GET.getlist(key)
            params[key] = values if key in ("services", "metric_types") and len(values) > 1 else values[-1]
        return params, None
    body, problem = json_body(request)
    if problem:
        return None, problem
    try:
        payload = parse_json(body or b"{}")
    except ValidationErrors as exc:
        return None, error_from(exc)
    if not isinstance(payload, dict):
        return None, error("Query must be a JSON object", 400, field="body")
    return payload, None


@csrf_exempt
@require_methods("GET", "POST")
async def query_view(request: HttpRequest) -> HttpResponse:
    # Pooled thread: a persistent connection keeps its page cache warm across
    # queries (SQLite's cache is per connection), and no connect per request.
    return await _on_pooled_thread(_query_sync)(request)


@api_access
def _query_sync(request: HttpRequest) -> HttpResponse:
    params, problem = _query_params(request)
    if problem:
        return problem
    try:
        spec = query.parse_query(params or {})
        return FastJsonResponse(query.run(spec))
    except ValidationErrors as exc:
        return error_from(exc)
    except OperationalError as exc:
        return _db_unavailable(exc)


@api_access
@require_methods("GET")
def services_view(request: HttpRequest) -> HttpResponse:
    try:
        return FastJsonResponse({"services": query.services_overview()})
    except OperationalError as exc:
        return _db_unavailable(exc)


ALERT_FILTERS = {"severity": ("warning", "critical"), "state": ("firing", "resolved")}


@api_access
@require_methods("GET")
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
        return error("Invalid alert filter", 400, details)
    try:
        alerts = [a.to_dict() for a in qs.order_by("-started_at", "-id")[:limit]]
    except OperationalError as exc:
        return _db_unavailable(exc)
    return FastJsonResponse({"alerts": alerts})


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
        if self.value is not None and time.monotonic() - self.at < ttl:
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
    return {"database": db_status, "services_count": services_count, "channel_layer": await broadcast.probe()}


@require_methods("GET")
async def health(request: HttpRequest) -> HttpResponse:
    if broadcast.degraded():
        recent_health.clear()  # a failed broadcast is fresher news than a cached "ok"
    checks = await recent_health.get(_run_health_checks)
    healthy = checks["database"] == "ok"
    body = {
        "status": ("healthy" if checks["channel_layer"] == "ok" else "degraded") if healthy else "unhealthy",
        "timestamp": iso(datetime.now(UTC)),
        "services_count": checks["services_count"],
        "checks": {"database": checks["database"], "channel_layer": checks["channel_layer"]},
        "streaming": broadcast.streaming_stats(),
        "version": settings.TELEMETRY["VERSION"],
    }
    return FastJsonResponse(body, status=200 if healthy else 503)


@require_methods("GET")
def ping(request: HttpRequest) -> HttpResponse:
    """A trivial JSON view: the benchmark's baseline for per-request overhead."""
    return FastJsonResponse({"status": "ok"})
