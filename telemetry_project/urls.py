from django.contrib import admin
from django.urls import include, path

from metrics.api.otlp import export_metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics/", include("metrics.api.urls")),
    path("v1/metrics", export_metrics, name="otlp-metrics"),
    path("", include("dashboard.urls")),
]
