from django.urls import path

from . import views

app_name = "metrics"
urlpatterns = [
    path("health", views.health, name="health"),
    path("ingest", views.ingest, name="ingest"),
    path("query", views.query_view, name="query"),
    path("services", views.services_view, name="services"),
    path("alerts", views.alerts_view, name="alerts"),
    path("ping", views.ping, name="ping"),
]
