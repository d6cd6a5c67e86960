"""The one JSON error shape and the decorators every API view shares."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import orjson
from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from .models import ApiKey, hash_key
from .validation import ValidationErrors, error_item


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


def _api_key_from(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("X-API-Key")


# last_used_at is informational: write it at most once a minute per key, so a
# busy client does not add a write to every ingest request.
LAST_USED_GRANULARITY = timedelta(minutes=1)


def authenticate_key(request: HttpRequest) -> tuple[ApiKey | None, HttpResponse | None]:
    """The ApiKey the request carries; an error response when keys are required and it is missing or bad.

    Looked up on every request (by its SHA-256, a unique index), so revoking a
    key in the admin takes effect on the very next request. A key that is sent
    but unknown or revoked is refused even when keys are optional: a client
    with a wrong key should learn it rather than write anonymously.
    """
    raw = _api_key_from(request)
    if not raw:
        if settings.TELEMETRY["REQUIRE_API_KEY"]:
            return None, _unauthorized("A valid API key is required (Authorization: Bearer <key> or X-API-Key)")
        return None, None
    key = ApiKey.objects.filter(key_hash=hash_key(raw)).first()
    if key is None or not key.is_active:
        return None, _unauthorized("Invalid or revoked API key")
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


def json_body(request: HttpRequest) -> tuple[bytes | None, HttpResponse | None]:
    """The raw JSON body, or the 413/415 answer."""
    content_type = request.content_type or ""
    if content_type not in ("application/json", "text/json") and not content_type.endswith("+json"):
        return None, error(
            f"Content-Type must be application/json, got {content_type or 'none'!r}", 415, field="Content-Type"
        )
    limit = settings.TELEMETRY["INGEST_MAX_BODY_BYTES"]
    length = request.META.get("CONTENT_LENGTH") or "0"
    try:
        declared = int(length)
    except ValueError:
        declared = 0
    if declared > limit:
        return None, error(f"Body of {declared} bytes exceeds the limit of {limit} bytes", 413, field="body")
    try:
        body = request.body
    except Exception:  # RequestDataTooBig and friends
        return None, error(f"Body exceeds the limit of {limit} bytes", 413, field="body")
    if len(body) > limit:
        return None, error(f"Body of {len(body)} bytes exceeds the limit of {limit} bytes", 413, field="body")
    return body, None


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF rejections in the one error shape for the API; Django's page elsewhere."""
    if request.path.startswith(("/metrics/", "/v1/")):
        return error(f"CSRF check failed: {reason}", 403, field="csrf")
    from django.views.csrf import csrf_failure as default_failure

    return default_failure(request, reason)
