import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "telemetry_project.settings")
# Initialise Django (apps, models) before importing consumers.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from metrics.routing import websocket_urlpatterns  # noqa: E402
from metrics.scheduler import start_if_enabled  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)

# Roll-ups and retention run inside the serving process (see metrics.scheduler).
start_if_enabled()
