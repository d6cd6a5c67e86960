"""Django's URLs. The ingest paths (/metrics/ingest, /v1/metrics) are routed before Django, in asgi.py."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics/", include("metrics.api.urls")),
    path("", include("dashboard.urls")),
]
