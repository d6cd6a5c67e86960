"""The one way points enter: submit(credentials, body, protocol) -> Receipt.

Every producer calls it: the ingest ASGI app for the JSON API and for OTLP
(metrics/api/ingest_app.py), and `manage.py generate_metrics` in process
(submit_now). In order:

1. decode and validate the body here, before anything is queued, so one
   expensive body never stalls the group commit everyone else waits for
   (bodies over INLINE_BODY_BYTES on a worker thread, smaller ones in place);
2. hand the writer the validated rows: its job checks the API key (per
   request, so a revoked key is refused at once) and the key's services, then
   stores the rows and their alert effects in the group's transaction;
3. after COMMIT, announce the points and alert changes once
   (metrics.events; metrics/live publishes them), and return the Receipt.

Refusals are raised as ApiError, a database that fails or does not answer as
DatabaseError or TimeoutError; metrics/api decides what they look like on the
wire. Nothing here imports metrics/live or metrics/api.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DataError, IntegrityError

from metrics import events, stats
from metrics.errors import ApiError, error_item
from metrics.ingest import otlp
from metrics.ingest.store import Digest, IngestResult, digest, store
from metrics.ingest.validation import extract_points, parse_json, validate_points
from metrics.ingest.writer import write, write_now
from metrics.models import AlertDict, ApiKey
from metrics.points import Row
from metrics.series.rollups import MinuteSummaries

# None: a trusted producer in this process (no key to check); a mapping: the request's
# Authorization / X-API-Key headers (empty when it sent none).
Credentials = Mapping[str, str] | None
# Bodies up to this size are prepared on the event loop: a worker thread hop costs more than they do.
INLINE_BODY_BYTES = 64 * 1024


class Protocol(StrEnum):
    JSON = "json"  # our points: one, an array, or {"metrics": [...]}
    OTLP_JSON = "otlp-json"  # ExportMetricsServiceRequest in OTLP's JSON mapping
    OTLP_PROTOBUF = "otlp-protobuf"  # ExportMetricsServiceRequest as protobuf


@dataclass(frozen=True)
class Receipt:
    accepted: int
    breached: list[AlertDict]  # alerts a point of this request breached (the JSON answer's "alerts")
    rejected: int = 0  # points refused while the rest was stored (OTLP partial success)
    message: str = ""  # why, and which metrics were not recognised (OTLP partial success)


@dataclass
class Prepared:
    """A body decoded and validated: what the writer stores, and what the answer will say."""

    rows: list[Row]
    contributions: list[MinuteSummaries] = field(default_factory=list)
    # What store() derives from the rows (insert parameters, series, wire points), made here so
    # the writer thread that every request queues behind does only the database work.
    digest: Digest | None = None
    # The refusal when a key limited to `allowed` services meets a row of another service.
    outside: Callable[[set[str]], ApiError | None] = lambda allowed: None
    rejected: int = 0
    message: str = ""
    committed: Callable[[], None] = lambda: None  # protocol bookkeeping once the rows are committed


def admit(credentials: Credentials) -> None:
    """Refuse a request without a key when keys are required, before its body is read (no database)."""
    if credentials is not None and not credentials:
        ApiKey.authenticate(credentials, ApiKey.INGEST)


def authenticate_key(credentials: Credentials) -> ApiKey | None:
    return None if credentials is None else ApiKey.authenticate(credentials, ApiKey.INGEST)


async def submit(credentials: Credentials, body: bytes, protocol: Protocol) -> Receipt:
    admit(credentials)
    try:
        if len(body) <= INLINE_BODY_BYTES:
            prepared = prepare(body, protocol)
        else:
            prepared = await sync_to_async(prepare, thread_sensitive=False)(body, protocol)
    except ApiError:
        if credentials:
            # A wrong key is the first thing its client must hear, bad body or not.
            await _key_check(credentials)
        raise
    services = prepared.digest.services if prepared.digest is not None else ()
    result = await write(store_prepared, credentials, prepared.rows, prepared, weight=len(body), locks=services)
    return finish(prepared, result)


async def _key_check(credentials: Credentials) -> None:
    if not settings.TELEMETRY.get("DB_THREAD_POOL", True):
        # Tests: on the test thread, inside the test's transaction, as write() runs there too.
        await sync_to_async(authenticate_key)(credentials)
        return
    await sync_to_async(authenticate_key, thread_sensitive=False)(credentials)


def submit_now(credentials: Credentials, body: bytes, protocol: Protocol) -> Receipt:
    """submit() for code without an event loop (management commands): the same steps on this thread."""
    admit(credentials)
    prepared = prepare(body, protocol)
    return finish(prepared, write_now(store_prepared, credentials, prepared.rows, prepared))


def prepare(body: bytes, protocol: Protocol) -> Prepared:
    """Decode and validate a body (no database): ApiError when it cannot be stored at all."""
    if protocol is Protocol.JSON:
        rows = validate_points(extract_points(parse_json(body), settings.TELEMETRY["INGEST_MAX_POINTS"]))
        return Prepared(rows, digest=digest(rows), outside=lambda allowed: _outside_json(rows, allowed))
    stats.otlp_requests.inc()
    try:
        done = otlp.prepare(body, as_json=protocol is Protocol.OTLP_JSON)
    except otlp.DecodeFailed as exc:
        raise ApiError(400, str(exc)) from None
    except otlp.TooManyPoints as exc:
        raise ApiError(413, str(exc)) from None
    mapped = done.mapped

    def committed() -> None:
        otlp.cumulative.update(done.state)  # only now may the cumulative state move on
        stats.otlp_points_accepted.inc(len(done.rows))
        stats.otlp_points_rejected.inc(mapped.rejected)
        stats.otlp_unknown_metrics.inc(sum(mapped.unknown.values()))

    return Prepared(
        done.rows,
        done.contributions,
        digest(done.rows) if done.rows else None,
        outside=lambda allowed: _outside_otlp(mapped.services, allowed),
        rejected=mapped.rejected,
        message=otlp.summary_message(mapped),
        committed=committed,
    )


def store_prepared(credentials: Credentials, rows: list[Row], prepared: Prepared) -> IngestResult | None:
    """The writer's job, inside the group transaction: the key, its services, then the rows."""
    key = authenticate_key(credentials)
    if key is not None and key.allowed_services:
        refused = prepared.outside(key.allowed_services)
        if refused is not None:
            raise refused
    if not rows:
        return None
    try:
        return store(rows, contributions=prepared.contributions, digested=prepared.digest)
    except (IntegrityError, DataError) as exc:
        # The data, not the database, is at fault: retrying would fail the same way.
        raise ApiError(400, f"The database refused this data ({type(exc).__name__}); nothing was stored") from None


def finish(prepared: Prepared, result: IngestResult | None) -> Receipt:
    """After COMMIT: protocol bookkeeping, the one announcement, the receipt."""
    prepared.committed()
    if result is None:
        return Receipt(0, [], prepared.rejected, prepared.message)
    events.announce(result.points, [a.to_dict() for a in result.changed])
    breached = [a.to_dict() for a in result.breached]
    return Receipt(result.accepted, breached, prepared.rejected, prepared.message)


def _outside_json(rows: list[Row], allowed: set[str]) -> ApiError | None:
    for index, row in enumerate(rows):
        if row.service not in allowed:
            return ApiError(
                403,
                f"This API key may not write service {row.service!r}",
                details=[error_item(index, "service", f"key is limited to {', '.join(sorted(allowed))}")],
            )
    return None


def _outside_otlp(services: set[str], allowed: set[str]) -> ApiError | None:
    outside = sorted(services - allowed)
    if not outside:
        return None
    # As the JSON API does: the whole request is refused, nothing is stored.
    message = f"This API key may not write service {outside[0]!r} (limited to {', '.join(sorted(allowed))})"
    return ApiError(403, f"{message}; nothing was stored")
