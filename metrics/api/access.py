"""Access rules shared by pages, the query API and the WebSocket.

DASHBOARD_REQUIRE_LOGIN puts pages, the read API (query, services, alerts,
Prometheus) and /ws/metrics behind a login: pages redirect to the login page,
API views answer 401 in the one JSON error shape, and the WebSocket handshake
is refused. Machines read with an API key of `read` scope (Authorization:
Bearer or X-API-Key; on the WebSocket also ?api_key=) or HTTP basic auth with
a Django user; a key that is sent is always checked, whatever the setting.
Acting on alerts (acknowledge, resolve) always needs a staff user.
The knob is read per request, so tests (and a settings reload) take effect at once.
Who is asking (keys, basic auth, login throttling) is metrics/api/auth.py.

WebSocket Origin: browsers always send one, so a handshake with an Origin
must come from the page's own origin (scheme, host and port, as Django sees
the request) or from CORS_ORIGINS; one without is a script or CLI client,
which cannot ride a victim's cookies, and is let through to the login check.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import iscoroutinefunction
from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.http.request import split_domain_port, validate_host

from metrics.api import auth
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
    basic = auth.basic_credentials(request.headers.get("Authorization", ""))
    if basic is not None:
        user = auth.basic_user(request, *basic)
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
            raw = auth.websocket_key(scope)
            if raw:
                key = await database_sync_to_async(auth.read_key)(raw)
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
        forwarded = auth.scope_header(scope, name.removeprefix("HTTP_").replace("_", "-").lower().encode())
        if forwarded is not None:
            secure = forwarded.split(",", 1)[0].strip() == expected
    return "https" if secure else "http"


def own_origin(scope: dict[str, Any]) -> tuple[str, str, int] | None:
    """The origin the handshake was addressed to (Host header + scheme), if its host is allowed."""
    host = auth.scope_header(scope, b"x-forwarded-host") if settings.USE_X_FORWARDED_HOST else None
    host = (host or auth.scope_header(scope, b"host") or "").split(",", 1)[0].strip()
    domain, port = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]  # what Django's HttpRequest.get_host allows
    if not domain or not validate_host(domain, allowed):
        return None
    scheme = _request_scheme(scope)
    return _origin_tuple(f"{scheme}://{domain}" + (f":{port}" if port else ""))


def origin_allowed(scope: dict[str, Any]) -> bool:
    origin = auth.scope_header(scope, b"origin")
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
