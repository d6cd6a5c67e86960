"""POST /v1/metrics: the OpenTelemetry OTLP/HTTP metrics receiver.

Answers follow the OTLP/HTTP specification rather than the JSON API's error
shape: success is an ExportMetricsServiceResponse (with partial_success when
data points were rejected), failures a google.rpc.Status, both in the
encoding of the request (protobuf or JSON).

Decoding, mapping and validation happen here, before the request is queued
(on a worker thread for big bodies, so the event loop keeps serving); the
writer thread's job only checks the key and stores, so one expensive body
cannot stall everyone's group commit.
"""

from __future__ import annotations

import zlib

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2

from metrics import events, stats
from metrics.api.errors import authenticate_key, credentials
from metrics.errors import ValidationErrors
from metrics.ingest import otlp
from metrics.ingest.store import store
from metrics.ingest.writer import write

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
GRPC_CODES = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    405: code_pb2.UNIMPLEMENTED,
    413: code_pb2.RESOURCE_EXHAUSTED,
    415: code_pb2.INVALID_ARGUMENT,
    429: code_pb2.RESOURCE_EXHAUSTED,
    503: code_pb2.UNAVAILABLE,
}
# Only 429 and 503 are retryable in OTLP/HTTP; a 413 must not be retried as it is.
RETRY_AFTER = {429: "1", 503: "2"}
# Bodies up to this size are prepared on the event loop: a worker thread hop costs more than they do.
INLINE_BODY_BYTES = 64 * 1024


def status_response(status: int, message: str, as_json: bool) -> HttpResponse:
    body = status_pb2.Status(code=GRPC_CODES.get(status, code_pb2.UNKNOWN), message=message)
    if as_json:
        response = HttpResponse(json_format.MessageToJson(body, indent=None), status=status, content_type=JSON)
    else:
        response = HttpResponse(body.SerializeToString(), status=status, content_type=PROTOBUF)
    if status in RETRY_AFTER:
        response["Retry-After"] = RETRY_AFTER[status]
    if status == 405:
        response["Allow"] = "POST"
    if status >= 400:
        stats.inc("otlp_requests_rejected")
    return response


def read_body(request: HttpRequest, as_json: bool) -> tuple[bytes | None, HttpResponse | None]:
    """The decompressed body, or the 413/415/400 answer."""
    limit = settings.TELEMETRY["INGEST_MAX_BODY_BYTES"]
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return None, status_response(413, f"Body of {declared} bytes exceeds the limit of {limit} bytes", as_json)
    try:
        body = request.body
    except Exception:  # RequestDataTooBig and friends
        return None, status_response(413, f"Body exceeds the limit of {limit} bytes", as_json)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body, None
    if encoding != "gzip":
        return None, status_response(415, f"Content-Encoding {encoding[:32]!r} is not supported; use gzip", as_json)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        return None, status_response(400, f"Body is not valid gzip: {exc}", as_json)
    if len(plain) > limit:
        return None, status_response(413, f"Decompressed body exceeds the limit of {limit} bytes", as_json)
    if not inflater.eof:
        return None, status_response(400, "Body is truncated gzip", as_json)
    return plain, None


def _store_sync(auth: dict[str, str], prepared: otlp.Prepared, as_json: bool):  # type: ignore[no-untyped-def]
    """The writer thread's part: check the key (per request, so revoking it takes effect at once) and store."""
    key, denied = authenticate_key(auth)
    if denied is not None:
        return status_response(denied.status_code, orjson.loads(denied.content)["error"], as_json), None
    allowed = key.allowed_services if key is not None else set()
    outside = sorted(prepared.mapped.services - allowed) if allowed else []
    if outside:
        # As the JSON API does: the whole request is refused, nothing is stored.
        message = f"This API key may not write service {outside[0]!r} (limited to {', '.join(sorted(allowed))})"
        return status_response(403, f"{message}; nothing was stored", as_json), None
    if not prepared.rows:
        return None, None
    try:
        return None, store(prepared.rows, contributions=prepared.contributions)
    except ValidationErrors as exc:
        return status_response(exc.status, exc.message, as_json), None
    except (IntegrityError, DataError) as exc:
        # The data, not the database, is at fault: retrying would fail the same way.
        return status_response(
            400, f"The database refused this data ({type(exc).__name__}); nothing was stored", as_json
        ), None


async def _prepare(body: bytes, as_json: bool) -> otlp.Prepared:
    if len(body) <= INLINE_BODY_BYTES:
        return otlp.prepare(body, as_json)
    return await sync_to_async(otlp.prepare, thread_sensitive=False)(body, as_json)


@csrf_exempt
async def export_metrics(request: HttpRequest) -> HttpResponse:
    content_type = (request.content_type or "").lower()
    as_json = content_type != PROTOBUF
    if request.method != "POST":
        return status_response(405, f"Method {request.method} not allowed; use POST", as_json)
    if content_type not in (PROTOBUF, JSON):
        return status_response(415, f"Content-Type must be {PROTOBUF} or {JSON}, got {content_type or 'none'!r}", True)
    auth = credentials(request.headers)
    if not auth:
        # No key at all needs no database to refuse, nor any decoding work.
        _, denied = authenticate_key(auth)
        if denied is not None:
            return status_response(denied.status_code, orjson.loads(denied.content)["error"], as_json)
    body, problem = read_body(request, as_json)
    if problem is not None:
        return problem
    assert body is not None
    stats.inc("otlp_requests")
    try:
        prepared = await _prepare(body, as_json)
    except otlp.DecodeFailed as exc:
        return status_response(400, str(exc), as_json)
    except otlp.TooManyPoints as exc:
        return status_response(413, str(exc), as_json)
    try:
        refused, result = await write(_store_sync, auth, prepared, as_json, weight=len(body))
    except (DatabaseError, TimeoutError) as exc:
        stats.inc("db_unavailable")
        return status_response(503, f"Database unavailable: {type(exc).__name__}; retry shortly", as_json)
    if refused is not None:
        return refused
    # Committed: only now may the cumulative state move on.
    otlp.cumulative.update(prepared.state)
    mapped = prepared.mapped
    stats.inc("otlp_points_accepted", len(prepared.rows))
    stats.inc("otlp_points_rejected", mapped.rejected)
    stats.inc("otlp_unknown_metrics", sum(mapped.unknown.values()))
    if result is not None:
        events.announce(result.points, [a.to_dict() for a in result.changed])
    payload = otlp.encode_response(mapped.rejected, otlp.summary_message(mapped), as_json)
    return HttpResponse(payload, content_type=JSON if as_json else PROTOBUF)
