"""Who is asking: API keys, HTTP basic auth and login throttling, for the parts of the API that are not ingestion.

The key check itself is ApiKey.authenticate (metrics/models.py): ingestion
(metrics/ingest/submit.py) and reading share it. What may be read or done
with the identity found here is metrics/api/access.py's decision.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from typing import Any
from urllib.parse import parse_qs

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from metrics.errors import ApiError
from metrics.models import ApiKey, api_key_from

# The headers an API key may come in, and their names in request.META.
KEY_HEADERS = (("Authorization", "HTTP_AUTHORIZATION"), ("X-API-Key", "HTTP_X_API_KEY"))


def key_credentials(request: HttpRequest) -> dict[str, str]:
    """The headers a key may come in, copied (so the key check can run on another thread)."""
    meta = request.META
    return {name: meta[key] for name, key in KEY_HEADERS if key in meta}


def basic_credentials(header: str) -> tuple[str, str] | None:
    if header[:6].lower() != "basic ":
        return None
    try:
        username, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""  # malformed: refused like a wrong password
    return (username, password) if sep else ("", "")


# A scraper sends its password every 15 s; hashing it each time (PBKDF2, ~0.3 s)
# would cost more than the scrape. A success is remembered briefly, by the
# header's hash (never the password itself); the user is re-read each time, so
# deactivating the account still takes effect at once.
BASIC_AUTH_CACHE_SECONDS = 60.0
_basic_ok: dict[str, tuple[int, float]] = {}


def basic_user(request: HttpRequest, username: str, password: str) -> Any:
    if not username:
        return None
    digest = hashlib.sha256(f"{username}\0{password}".encode()).hexdigest()
    remembered = _basic_ok.get(digest)
    if remembered is not None and remembered[1] > time.monotonic():
        user = get_user_model().objects.filter(pk=remembered[0], is_active=True).first()
        if user is not None:
            return user
    # authenticate() with the request, so django-axes counts failures and locks out guessing.
    user = authenticate(request, username=username, password=password)
    if user is None or not user.is_active:
        _basic_ok.pop(digest, None)
        return None
    if len(_basic_ok) > 1000:
        _basic_ok.clear()
    _basic_ok[digest] = (user.pk, time.monotonic() + BASIC_AUTH_CACHE_SECONDS)
    return user


def scope_header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def websocket_key(scope: dict[str, Any]) -> str | None:
    """The raw API key of a handshake: Authorization: Bearer, X-API-Key, or ?api_key=."""
    headers = {
        "Authorization": scope_header(scope, b"authorization") or "",
        "X-API-Key": scope_header(scope, b"x-api-key"),
    }
    raw = api_key_from({k: v for k, v in headers.items() if v})
    if raw:
        return raw
    # Browsers' WebSocket API cannot set headers; the query string is the fallback (it shows in access logs).
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("api_key")
    return values[0] if values else None


def read_key(raw: str) -> ApiKey | None:
    try:
        return ApiKey.authenticate({"X-API-Key": raw}, ApiKey.READ)
    except ApiError:
        return None


# --- Login throttling (django-axes; settings AXES_*) ------------------------------------


class LoginThrottleBackend(AxesStandaloneBackend):
    """django-axes' lockout check for every authenticate() that comes with a request.

    Every login this server offers passes the request (admin, dashboard
    LoginView, basic auth on the read API), so each is counted and locked out.
    Only callers with no request at all (the test client's login(), scripts) skip
    the check: there is no client address to count against, and axes would raise.
    """

    def authenticate(self, request: HttpRequest | None, *args: Any, **kwargs: Any) -> None:
        if request is None:
            return None
        return super().authenticate(request, *args, **kwargs)


def lockout_response(request: HttpRequest, original_response: Any = None, credentials: Any = None) -> HttpResponse:
    """429 once a username+address pair is locked out: JSON for the API, a page for logins."""
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    message = f"Too many failed logins: locked out for {minutes} minutes"
    if request.path.startswith(("/metrics/", "/v1/")):
        from metrics.api.errors import error

        response = error(message, 429, field="Authorization")
    else:
        response = render(request, "admin/locked_out.html", {"title": message, "minutes": minutes}, status=429)
    response["Retry-After"] = str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    return response
