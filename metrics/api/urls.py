from django.urls import path

from metrics.api import export as export_views
from metrics.api import views

app_name = "metrics"
urlpatterns = [
    path("health", views.health, name="health"),
    path("ingest", views.ingest, name="ingest"),
    path("query", views.query_view, name="query"),
    path("services", views.services_view, name="services"),
    path("alerts", views.alerts_view, name="alerts"),
    path("ping", views.ping, name="ping"),
    path("openapi.json", export_views.openapi_view, name="openapi"),
    path("prometheus", export_views.prometheus_view, name="prometheus"),
]
