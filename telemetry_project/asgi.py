"""The ASGI application, and its route map by path.

| path              | served by                                                         |
|-------------------|-------------------------------------------------------------------|
| /metrics/ingest   | metrics.api.ingest_app (JSON points; agents and browsers alike)   |
| /v1/metrics       | metrics.api.ingest_app (OTLP/HTTP, protobuf or JSON)              |
| /ws/metrics       | metrics.live.consumer (WebSocket)                                 |
| everything else   | Django: pages, query API, health, ping, admin (full middleware)   |
"""

import os
import sys

if os.environ.get("TELEMETRY_TRACEMALLOC"):  # only under bench/soak.py --tracemalloc
    __import__("bench.memtrace").memtrace.install()

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "telemetry_project.settings")
# Initialise Django (apps, models) before importing consumers.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from metrics.api.access import WebsocketLoginGuard, WebsocketOriginValidator  # noqa: E402
from metrics.api.ingest_app import ingest_app  # noqa: E402
from metrics.live.routing import websocket_urlpatterns  # noqa: E402
from metrics.maintenance.runner import start_if_enabled  # noqa: E402

# Ingestion is one ASGI app outside Django's handler (it is most of the traffic
# and uses no session, CSRF or template); every other HTTP path is Django.
HTTP_ROUTES = {
    "/metrics/ingest": ingest_app,
    "/v1/metrics": ingest_app,
}


async def http(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    await HTTP_ROUTES.get(scope["path"], django_asgi_app)(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http,
        # A browser's Origin must be the server's own (scheme, host, port) or in
        # CORS_ORIGINS; then the session user or API key is resolved and, when
        # DASHBOARD_REQUIRE_LOGIN is on, anonymous handshakes are refused.
        "websocket": WebsocketOriginValidator(
            AuthMiddlewareStack(WebsocketLoginGuard(URLRouter(websocket_urlpatterns)))
        ),
    }
)

# The ingest writer thread makes several short SQLite calls per request, each
# releasing the GIL; while the event loop or a dashboard query holds it, taking
# it back can wait a whole switch interval (5 ms by default) every time. In the
# 30-minute soak the writer fell behind under sustained load with the default
# and kept up with 1 ms (docs/reliability.md).
sys.setswitchinterval(settings.TELEMETRY["GIL_SWITCH_INTERVAL_MS"] / 1000)

# Roll-ups and retention run inside the serving process (see metrics.maintenance.runner).
start_if_enabled()
