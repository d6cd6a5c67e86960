from django.contrib.auth import views as auth_views
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import path

from . import data, views

app_name = "dashboard"
urlpatterns = [
    path("", views.overview, name="overview"),
    # Django's own views (so login throttling backends cover them), our dark template.
    # Any active user may log in here; the admin keeps its staff-only login.
    path("login/", auth_views.LoginView.as_view(template_name="dashboard/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
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
