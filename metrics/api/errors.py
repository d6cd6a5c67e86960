"""What a refusal looks like on the wire, and the decorator every API view shares.

Code below the API raises ApiError (metrics/errors.py) and never builds an
answer. Here it becomes one of two shapes: our JSON error shape
`{"error", "details": [{"index", "field", "message"}]}` (render_json) or, on
the OTLP receiver, a google.rpc.Status in the request's encoding
(render_otlp). `database_unavailable()` is the one place where a database
that does not answer becomes 503 with Retry-After.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import orjson
from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2

from metrics import stats
from metrics.errors import ApiError

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class FastJsonResponse(HttpResponse):
    """JsonResponse with orjson: the ingest answer is on the hot path."""

    def __init__(self, data: Any, status: int = 200, **kwargs: Any) -> None:
        kwargs.setdefault("content_type", JSON)
        super().__init__(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status=status, **kwargs)


# Retry-After when the refusal does not set its own: a limit (429) passes, a
# database comes back; a 413 is retried only smaller, at once.
JSON_RETRY_AFTER = {413: "0", 429: "1", 503: "1"}


def render_json(exc: ApiError) -> HttpResponse:
    """Our one JSON error shape."""
    response = FastJsonResponse({"error": exc.message, "details": exc.details}, status=exc.status)
    if exc.status in JSON_RETRY_AFTER:
        response["Retry-After"] = JSON_RETRY_AFTER[exc.status]
    for name, value in exc.headers.items():
        response[name] = value
    return response


def error(
    message: str, status: int = 400, details: list[dict[str, Any]] | None = None, field: str = "body"
) -> HttpResponse:
    """render_json of a refusal made on the spot (access checks, CSRF, lockouts)."""
    return render_json(ApiError(status, message, field=field, details=details))


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
OTLP_RETRY_AFTER = {429: "1", 503: "2"}


def render_otlp(exc: ApiError, as_json: bool) -> HttpResponse:
    """OTLP/HTTP's failure answer: a google.rpc.Status, in protobuf or its JSON mapping."""
    body = status_pb2.Status(code=GRPC_CODES.get(exc.status, code_pb2.UNKNOWN), message=exc.message)
    if as_json:
        response = HttpResponse(json_format.MessageToJson(body, indent=None), status=exc.status, content_type=JSON)
    else:
        response = HttpResponse(body.SerializeToString(), status=exc.status, content_type=PROTOBUF)
    for name, value in exc.headers.items():
        response[name] = value
    if exc.status in OTLP_RETRY_AFTER:
        response["Retry-After"] = OTLP_RETRY_AFTER[exc.status]
    elif "Retry-After" in response:
        del response["Retry-After"]
    stats.otlp_requests_rejected.inc()
    return response


def database_unavailable(exc: BaseException) -> ApiError:
    """The answer for a database that failed or did not answer in time: 503, retry in 2 s."""
    stats.db_unavailable.inc()
    stats.mark("db_unavailable")  # /metrics/health stops reusing an older "ok"
    return ApiError(
        503,
        f"Database unavailable: {type(exc).__name__}; retry shortly",
        field="database",
        headers={"Retry-After": "2"},
    )


def api_view(*methods: str) -> Callable:
    """An API view: other methods get 405 with Allow; ApiError and an unreachable database become JSON answers."""

    def refuse(request: HttpRequest) -> HttpResponse | None:
        if request.method in methods:
            return None
        allow = ", ".join(methods)
        return render_json(
            ApiError(405, f"Method {request.method} not allowed; use {allow}", field="method", headers={"Allow": allow})
        )

    def decorator(view: Callable) -> Callable:
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
                refused = refuse(request)
                if refused is not None:
                    return refused
                try:
                    return await view(request, *args, **kwargs)
                except ApiError as exc:
                    return render_json(exc)
                except OperationalError as exc:
                    return render_json(database_unavailable(exc))

            return async_wrapper

        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            refused = refuse(request)
            if refused is not None:
                return refused
            try:
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return render_json(exc)
            except OperationalError as exc:
                return render_json(database_unavailable(exc))

        return wrapper

    return decorator


def require_json(content_type: str, field: str = "Content-Type") -> None:
    """415 unless the (parsed, lower-case) media type is JSON."""
    if content_type in ("application/json", "text/json") or content_type.endswith("+json"):
        return
    raise ApiError(415, f"Content-Type must be application/json, got {content_type or 'none'!r}", field=field)


def require_size(size: int) -> None:
    """413 when a body (or its Content-Length) is over INGEST_MAX_BODY_BYTES."""
    limit = settings.TELEMETRY["INGEST_MAX_BODY_BYTES"]
    if size > limit:
        raise ApiError(413, f"Body of {size} bytes exceeds the limit of {limit} bytes")


def declared_size(request: HttpRequest) -> int:
    """The request's Content-Length (0 when missing or malformed: the body read is checked too)."""
    try:
        return int(request.META.get("CONTENT_LENGTH") or "0")
    except ValueError:
        return 0


def json_body(request: HttpRequest) -> bytes:
    """The raw JSON body of a Django request; ApiError 415/413 otherwise."""
    require_json(request.content_type or "")
    require_size(declared_size(request))
    try:
        body = request.body
    except Exception:  # RequestDataTooBig and friends
        limit = settings.TELEMETRY["INGEST_MAX_BODY_BYTES"]
        raise ApiError(413, f"Body exceeds the limit of {limit} bytes") from None
    require_size(len(body))
    return body


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF rejections in the one error shape for the API; Django's page elsewhere."""
    if request.path.startswith(("/metrics/", "/v1/")):
        return error(f"CSRF check failed: {reason}", 403, field="csrf")
    from django.views.csrf import csrf_failure as default_failure

    return default_failure(request, reason)
