from django.urls import path

from metrics.live.consumer import MetricsConsumer

websocket_urlpatterns = [
    path("ws/metrics", MetricsConsumer.as_asgi()),
    path("ws/metrics/", MetricsConsumer.as_asgi()),
]
