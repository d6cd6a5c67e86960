from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import path

from . import data, views

app_name = "dashboard"
urlpatterns = [
    path("", views.overview, name="overview"),
    path("services/<str:name>/", views.service_detail, name="service"),
    path("alerts/<int:pk>/acknowledge", views.acknowledge, name="acknowledge"),
    path("alerts/<int:pk>/resolve", views.resolve, name="resolve"),
    path("alerts/<int:pk>/silence", views.silence, name="silence"),
    path("dashboard/data/percentiles", data.percentiles_view, name="data-percentiles"),
    path("dashboard/data/by-service", data.by_service_view, name="data-by-service"),
    path("dashboard/data/compare", data.compare_view, name="data-compare"),
]

# Plain daphne (make run, the live tests) does not serve static files; with
# DEBUG on, Django does. Deployments serve them from STATIC_ROOT (nginx).
urlpatterns += staticfiles_urlpatterns()
