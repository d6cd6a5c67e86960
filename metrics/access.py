"""Access rules shared by pages, the query API and the WebSocket.

DASHBOARD_REQUIRE_LOGIN puts pages, the query API and /ws/metrics behind
Django's login: pages redirect to the login page, API views answer 401 in the
one JSON error shape, and the WebSocket handshake is refused. Acting on alerts
(acknowledge, resolve) always needs a staff user, whatever the setting.
The knob is read per request, so tests (and a settings reload) take effect at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden


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
    if login_required_enabled() and not _authenticated(request.user):
        from .http import error

        return error("Login required: sign in to the dashboard first", 401, field="session")
    return None


def _staff_check(request: HttpRequest) -> HttpResponse | None:
    from .http import error

    if not _authenticated(request.user):
        return error("Login required: acting on alerts needs a staff user", 401, field="session")
    if not request.user.is_staff:
        return error("Only staff users may acknowledge or resolve alerts", 403, field="session")
    return None


def dashboard_access(view: Callable) -> Callable:
    """Pages: redirect to login when DASHBOARD_REQUIRE_LOGIN is on and nobody is logged in."""
    return _both(view, _page_check)


def api_access(view: Callable) -> Callable:
    """Query API (/metrics/query, /services, /alerts): 401 JSON when login is required and missing."""
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


is_staff = can_act_on_alerts


def websocket_allowed(scope: dict[str, Any]) -> bool:
    """Whether a WebSocket connection with this scope may be accepted (the consumer may call it too)."""
    if not login_required_enabled():
        return True
    return _authenticated(scope.get("user"))


class WebsocketLoginGuard:
    """ASGI middleware: refuses the handshake (HTTP 403) when login is required and missing.

    Sits inside channels' AuthMiddlewareStack, which resolves scope["user"] from
    the session cookie before this runs.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> Any:
        if scope["type"] == "websocket" and not websocket_allowed(scope):
            denier = WebsocketDenier()
            return await denier(scope, receive, send)
        return await self.app(scope, receive, send)


def dashboard_data_access(view: Callable) -> Callable:
    """Dashboard JSON endpoints: 401 in the API error shape instead of a login redirect."""
    return _both(view, _api_check)
