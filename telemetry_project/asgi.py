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

from metrics.access import WebsocketLoginGuard, WebsocketOriginValidator  # noqa: E402
from metrics.routing import websocket_urlpatterns  # noqa: E402
from metrics.scheduler import start_if_enabled  # noqa: E402
from telemetry_project.fastlane import LeanASGIHandler, route_http  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Agents' ingest posts skip Django's handler altogether (metrics.direct);
        # other ingestion skips the session/CSRF/auth middleware it never uses (fastlane).
        "http": route_http(django_asgi_app, LeanASGIHandler()),
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

# Roll-ups and retention run inside the serving process (see metrics.scheduler).
start_if_enabled()
