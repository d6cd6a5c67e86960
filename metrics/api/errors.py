"""The one JSON error shape and the decorators every API view shares."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import orjson
from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from metrics.errors import ValidationErrors, error_item
from metrics.models import ApiKey, hash_key


class FastJsonResponse(HttpResponse):
    """JsonResponse with orjson: the ingest answer is on the hot path."""

    def __init__(self, data: Any, status: int = 200, **kwargs: Any) -> None:
        kwargs.setdefault("content_type", "application/json")
        super().__init__(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status=status, **kwargs)


def error(
    message: str, status: int = 400, details: list[dict[str, Any]] | None = None, field: str = "body"
) -> HttpResponse:
    body = {"error": message, "details": details if details is not None else [error_item(None, field, message)]}
    return FastJsonResponse(body, status=status)


def error_from(exc: ValidationErrors) -> HttpResponse:
    response = error(exc.message, exc.status, exc.details)
    if exc.status in (413, 429, 503):
        response["Retry-After"] = "1" if exc.status != 413 else "0"
    return response


def api_key_from(headers: Mapping[str, str]) -> str | None:
    """The raw key of Authorization: Bearer or X-API-Key, if any."""
    header = headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return headers.get("X-API-Key")


def credentials(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers authenticate_key reads, copied so the check can run on another thread."""
    return {name: headers[name] for name in ("Authorization", "X-API-Key") if name in headers}


# last_used_at is informational: write it at most once a minute per key, so a
# busy client does not add a write to every ingest request.
LAST_USED_GRANULARITY = timedelta(minutes=1)


def authenticate_key(
    headers: Mapping[str, str], scope: str = ApiKey.INGEST
) -> tuple[ApiKey | None, HttpResponse | None]:
    """The ApiKey the request carries; an error response when it is missing, bad or lacks `scope`.

    Looked up on every request (by its SHA-256, a unique index), so revoking a
    key in the admin takes effect on the very next request. A key that is sent
    but unknown or revoked is refused even when keys are optional: a client
    with a wrong key should learn it rather than write anonymously. A missing
    key is refused only for ingest when REQUIRE_API_KEY is on; whether reading
    needs credentials at all is metrics.api.access's decision (DASHBOARD_REQUIRE_LOGIN).
    """
    raw = api_key_from(headers)
    if not raw:
        if scope == ApiKey.INGEST and settings.TELEMETRY["REQUIRE_API_KEY"]:
            return None, _unauthorized("A valid API key is required (Authorization: Bearer <key> or X-API-Key)")
        return None, None
    key = ApiKey.objects.filter(key_hash=hash_key(raw)).first()
    if key is None or not key.is_active:
        return None, _unauthorized("Invalid or revoked API key")
    if not key.has_scope(scope):
        return None, error(f"This API key may not {scope}: its scopes are {key.scopes}", 403, field="Authorization")
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_GRANULARITY:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key, None


def _unauthorized(message: str) -> HttpResponse:
    response = error(message, 401, field="Authorization")
    response["WWW-Authenticate"] = 'Bearer realm="telemetry"'
    return response


def require_methods(*methods: str) -> Callable:
    """405 in the JSON error shape, with Allow, for any other method."""

    def decorator(view: Callable) -> Callable:
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
                if request.method not in methods:
                    return _not_allowed(request, methods)
                return await view(request, *args, **kwargs)

            return async_wrapper

        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                return _not_allowed(request, methods)
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def _not_allowed(request: HttpRequest, methods: tuple[str, ...]) -> HttpResponse:
    response = error(f"Method {request.method} not allowed; use {', '.join(methods)}", 405, field="method")
    response["Allow"] = ", ".join(methods)
    return response


def refuse_content_type(content_type: str) -> HttpResponse | None:
    """415 unless the (parsed, lower-case) media type is JSON."""
    if content_type in ("application/json", "text/json") or content_type.endswith("+json"):
        return None
    return error(f"Content-Type must be application/json, got {content_type or 'none'!r}", 415, field="Content-Type")


def refuse_size(size: int) -> HttpResponse | None:
    """413 when a body (or its Content-Length) is over INGEST_MAX_BODY_BYTES."""
    limit = settings.TELEMETRY["INGEST_MAX_BODY_BYTES"]
    if size <= limit:
        return None
    return error(f"Body of {size} bytes exceeds the limit of {limit} bytes", 413, field="body")


def json_body(request: HttpRequest) -> tuple[bytes | None, HttpResponse | None]:
    """The raw JSON body, or the 413/415 answer."""
    problem = refuse_content_type(request.content_type or "")
    if problem:
        return None, problem
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or "0")
    except ValueError:
        declared = 0
    problem = refuse_size(declared)
    if problem:
        return None, problem
    try:
        body = request.body
    except Exception:  # RequestDataTooBig and friends
        limit = settings.TELEMETRY["INGEST_MAX_BODY_BYTES"]
        return None, error(f"Body exceeds the limit of {limit} bytes", 413, field="body")
    problem = refuse_size(len(body))
    return (None, problem) if problem else (body, None)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF rejections in the one error shape for the API; Django's page elsewhere."""
    if request.path.startswith(("/metrics/", "/v1/")):
        return error(f"CSRF check failed: {reason}", 403, field="csrf")
    from django.views.csrf import csrf_failure as default_failure

    return default_failure(request, reason)
