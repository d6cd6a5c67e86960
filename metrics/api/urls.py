"""The Django URLs under /metrics/. POST /metrics/ingest is not here: telemetry_project/asgi.py routes it to the ingest app."""

from django.urls import path

from metrics.api import export, views

app_name = "metrics"
urlpatterns = [
    path("health", views.health, name="health"),
    path("query", views.query_view, name="query"),
    path("services", views.services_view, name="services"),
    path("alerts", views.alerts_view, name="alerts"),
    path("ping", views.ping, name="ping"),
    path("openapi.json", export.openapi_view, name="openapi"),
    path("prometheus", export.prometheus_view, name="prometheus"),
]
