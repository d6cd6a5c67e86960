"""A lean Django handler for the machine-to-machine endpoints.

Under ASGI every MiddlewareMixin middleware (security, sessions, common, CSRF,
auth, messages, clickjacking) runs its hooks through sync_to_async: two thread
hand-offs each, ~16 per request, which the profile showed to cost more than
the ingest work itself. Ingestion (JSON and OTLP) authenticates with API keys,
is CSRF-exempt and never touches sessions, so these paths get a handler with
only async-native middleware: request timing, CORS, and the security headers
an API answer needs. Everything else (pages, query API, admin) keeps the full
stack from settings.MIDDLEWARE.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponse

from metrics.api import ingest_app as direct_ingest

# Exact paths served by the lean handler; /metrics/ping is the benchmark's
# trivial baseline and must pay the same per-request cost as ingestion.
LEAN_PATHS = frozenset({"/metrics/ingest", "/v1/metrics", "/metrics/ping"})
LEAN_MIDDLEWARE = [
    "metrics.api.timing.RequestTimingMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "telemetry_project.fastlane.ApiSecurityHeadersMiddleware",
]


class ApiSecurityHeadersMiddleware:
    """The headers SecurityMiddleware would add to a JSON answer, without its thread hops."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        response = await self.get_response(request)
        if settings.SECURE_CONTENT_TYPE_NOSNIFF:
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if settings.SECURE_HSTS_SECONDS and request.is_secure():
            response.headers.setdefault("Strict-Transport-Security", f"max-age={settings.SECURE_HSTS_SECONDS}")
        return response


class LeanASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler reads settings.MIDDLEWARE; swap it only while building this chain.
        saved = settings.MIDDLEWARE
        settings.MIDDLEWARE = LEAN_MIDDLEWARE
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = saved


def route_http(full: Any, lean: Any) -> Callable[..., Awaitable[None]]:
    """ASGI app: agents' ingest posts to metrics.api.ingest_app, LEAN_PATHS to `lean`, the rest to `full`."""

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if direct_ingest.serves(scope):
            handler = direct_ingest.app
        else:
            handler = lean if scope.get("path") in LEAN_PATHS else full
        await handler(scope, receive, send)

    assert iscoroutinefunction(app)
    return app
