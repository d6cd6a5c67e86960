"""Access rules shared by pages, the query API and the WebSocket.

DASHBOARD_REQUIRE_LOGIN puts pages, the read API (query, services, alerts,
Prometheus) and /ws/metrics behind a login: pages redirect to the login page,
API views answer 401 in the one JSON error shape, and the WebSocket handshake
is refused. Machines read with an API key of `read` scope (Authorization:
Bearer or X-API-Key; on the WebSocket also ?api_key=) or HTTP basic auth with
a Django user; a key that is sent is always checked, whatever the setting.
Acting on alerts (acknowledge, resolve) always needs a staff user.
The knob is read per request, so tests (and a settings reload) take effect at once.

WebSocket Origin: browsers always send one, so a handshake with an Origin
must come from the page's own origin (scheme, host and port, as Django sees
the request) or from CORS_ORIGINS; one without is a script or CLI client,
which cannot ride a victim's cookies, and is let through to the login check.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from asgiref.sync import iscoroutinefunction
from axes.backends import AxesStandaloneBackend
from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.http.request import split_domain_port, validate_host
from django.shortcuts import render

from metrics.errors import ApiError
from metrics.models import ApiKey, api_key_from


def login_required_enabled() -> bool:
    return bool(settings.TELEMETRY["DASHBOARD_REQUIRE_LOGIN"])


def _authenticated(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated)


def _both(view: Callable, check: Callable[[HttpRequest], HttpResponse | None]) -> Callable:
    """Wrap a sync or async view with a synchronous check that may answer instead of it."""
    if iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            denied = check(request)
            return denied if denied is not None else await view(request, *args, **kwargs)

        return async_wrapper

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        denied = check(request)
        return denied if denied is not None else view(request, *args, **kwargs)

    return wrapper


def _page_check(request: HttpRequest) -> HttpResponse | None:
    if login_required_enabled() and not _authenticated(request.user):
        return redirect_to_login(request.get_full_path())
    return None


def _api_check(request: HttpRequest) -> HttpResponse | None:
    from metrics.api.errors import error, render_json

    if api_key_from(request.headers):
        # A key that is sent must be valid and allowed to read, login or not.
        try:
            ApiKey.authenticate(request.headers, ApiKey.READ)
        except ApiError as exc:
            return render_json(exc)
        return None
    basic = _basic_credentials(request.headers.get("Authorization", ""))
    if basic is not None:
        user = _basic_user(request, *basic)
        if user is None:
            response = error("Invalid username or password (HTTP basic auth)", 401, field="Authorization")
            response["WWW-Authenticate"] = 'Bearer realm="telemetry"'
            return response
        request.user = user
        return None
    if login_required_enabled() and not _authenticated(request.user):
        response = error(
            "Login required: sign in to the dashboard, or send an API key with read scope", 401, field="session"
        )
        # Bearer, not Basic: a Basic challenge would pop a password dialog over the dashboard's own fetches.
        response["WWW-Authenticate"] = 'Bearer realm="telemetry"'
        return response
    return None


def _basic_credentials(header: str) -> tuple[str, str] | None:
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


def _basic_user(request: HttpRequest, username: str, password: str) -> Any:
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


def _staff_check(request: HttpRequest) -> HttpResponse | None:
    from metrics.api.errors import error

    if not _authenticated(request.user):
        return error("Login required: acting on alerts needs a staff user", 401, field="session")
    if not request.user.is_staff:
        return error("Only staff users may acknowledge or resolve alerts", 403, field="session")
    return None


def dashboard_access(view: Callable) -> Callable:
    """Pages: redirect to login when DASHBOARD_REQUIRE_LOGIN is on and nobody is logged in."""
    return _both(view, _page_check)


def api_access(view: Callable) -> Callable:
    """Read API (/metrics/query, /services, /alerts, /prometheus): 401/403 JSON when access is missing.

    Sessions, read-scope API keys and HTTP basic auth all count (see the module docstring).
    """
    return _both(view, _api_check)


def staff_required(view: Callable) -> Callable:
    """Acting on alerts: 401 JSON without a login, 403 JSON for a logged-in non-staff user."""
    return _both(view, _staff_check)


def _page_staff_check(request: HttpRequest) -> HttpResponse | None:
    if not _authenticated(request.user):
        return redirect_to_login(request.get_full_path())
    if not request.user.is_staff:
        return HttpResponseForbidden("Only staff users may acknowledge or resolve alerts.")
    return None


def alert_action_access(view: Callable) -> Callable:
    """Dashboard alert actions: anonymous users go to the login page, non-staff users get 403."""
    return _both(view, _page_staff_check)


def can_act_on_alerts(user: Any) -> bool:
    """Acknowledge/resolve: staff only, whatever DASHBOARD_REQUIRE_LOGIN says (the issue's rule).

    The local demo shows alerts to everyone; acting on them needs `createsuperuser` and a login.
    """
    return _authenticated(user) and bool(user.is_staff)


def websocket_allowed(scope: dict[str, Any]) -> bool:
    """Whether a WebSocket connection with this scope may be accepted (the consumer may call it too).

    scope["api_key"] is set by WebsocketLoginGuard only for a valid key with read scope.
    """
    if not login_required_enabled():
        return True
    return _authenticated(scope.get("user")) or scope.get("api_key") is not None


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def websocket_key(scope: dict[str, Any]) -> str | None:
    """The raw API key of a handshake: Authorization: Bearer, X-API-Key, or ?api_key=."""
    headers = {"Authorization": _header(scope, b"authorization") or "", "X-API-Key": _header(scope, b"x-api-key")}
    raw = api_key_from({k: v for k, v in headers.items() if v})
    if raw:
        return raw
    # Browsers' WebSocket API cannot set headers; the query string is the fallback (it shows in access logs).
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("api_key")
    return values[0] if values else None


def _read_key(raw: str) -> ApiKey | None:
    try:
        return ApiKey.authenticate({"X-API-Key": raw}, ApiKey.READ)
    except ApiError:
        return None


class WebsocketLoginGuard:
    """ASGI middleware: refuses the handshake (HTTP 403) when login is required and missing.

    Sits inside channels' AuthMiddlewareStack, which resolves scope["user"] from
    the session cookie before this runs. A handshake that carries an API key
    needs it valid and of read scope, whatever DASHBOARD_REQUIRE_LOGIN says.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> Any:
        if scope["type"] == "websocket":
            raw = websocket_key(scope)
            if raw:
                key = await database_sync_to_async(_read_key)(raw)
                if key is None:
                    return await WebsocketDenier()(scope, receive, send)
                scope = {**scope, "api_key": key}
            if not websocket_allowed(scope):
                return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)


DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_tuple(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) origin, default ports filled in; None when it is not one."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def _request_scheme(scope: dict[str, Any]) -> str:
    secure = scope.get("scheme", "ws") in ("wss", "https")
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        # The same trust Django gives the header for HTTP requests (request.is_secure()).
        name, expected = proxy
        forwarded = _header(scope, name.removeprefix("HTTP_").replace("_", "-").lower().encode())
        if forwarded is not None:
            secure = forwarded.split(",", 1)[0].strip() == expected
    return "https" if secure else "http"


def own_origin(scope: dict[str, Any]) -> tuple[str, str, int] | None:
    """The origin the handshake was addressed to (Host header + scheme), if its host is allowed."""
    host = _header(scope, b"x-forwarded-host") if settings.USE_X_FORWARDED_HOST else None
    host = (host or _header(scope, b"host") or "").split(",", 1)[0].strip()
    domain, port = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]  # what Django's HttpRequest.get_host allows
    if not domain or not validate_host(domain, allowed):
        return None
    scheme = _request_scheme(scope)
    return _origin_tuple(f"{scheme}://{domain}" + (f":{port}" if port else ""))


def origin_allowed(scope: dict[str, Any]) -> bool:
    origin = _header(scope, b"origin")
    if origin is None:
        return True  # not a browser, so no ambient cookies to abuse; the login check still applies
    claimed = _origin_tuple(origin)
    if claimed is None:  # "null" (sandboxed frames, file://) and anything else that is not http(s)
        return False
    if claimed == own_origin(scope):
        return True
    return claimed in {_origin_tuple(o) for o in settings.CORS_ALLOWED_ORIGINS}


class WebsocketOriginValidator:
    """ASGI middleware: refuses (HTTP 403) a handshake whose Origin is not the server's own or in CORS_ORIGINS.

    channels' AllowedHostsOriginValidator compares only the Origin's host with
    ALLOWED_HOSTS, so a page on another port of the same host (or an allowed
    host over plain http) could open the stream with the victim's cookies.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)


def dashboard_data_access(view: Callable) -> Callable:
    """Dashboard JSON endpoints: 401 in the API error shape instead of a login redirect."""
    return _both(view, _api_check)


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
