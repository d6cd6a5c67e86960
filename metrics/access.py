"""Access rules shared by pages, the query API and the WebSocket.

DASHBOARD_REQUIRE_LOGIN puts pages, the query API and /ws/metrics behind
Django's login. Acting on alerts always needs a staff user.
(Owned by the security work; dashboard views import these decorators.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse


def dashboard_access(view: Callable) -> Callable:
    """Pages: redirect to login when DASHBOARD_REQUIRE_LOGIN is on and nobody is logged in."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if settings.TELEMETRY["DASHBOARD_REQUIRE_LOGIN"] and not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return wrapper
