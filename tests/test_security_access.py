"""DASHBOARD_REQUIRE_LOGIN: pages redirect, the query API answers 401 JSON; alert actions need staff."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.http import HttpResponse
from django.test import RequestFactory

from metrics.api.access import alert_action_access, can_act_on_alerts, staff_required

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]

# The points carry literal timestamps; the clock stands just after them so they
# stay inside the raw retention whatever day the suite runs.
NOW = datetime(2026, 11, 28, 0, 5, tzinfo=UTC)

API_PATHS = ["/metrics/query", "/metrics/services", "/metrics/alerts"]


@pytest.fixture
def login_required(telemetry):
    return telemetry(DASHBOARD_REQUIRE_LOGIN=True)


@pytest.fixture
def user():
    return get_user_model().objects.create_user("viewer", password="pw")


@pytest.mark.parametrize("path", API_PATHS)
def test_the_query_api_answers_401_json_without_a_login(client, login_required, path):
    response = client.get(path)
    assert response.status_code == 401
    body = response.json()
    assert body["error"].startswith("Login required")
    assert body["details"][0]["field"] == "session"


@pytest.mark.parametrize("path", API_PATHS)
def test_the_query_api_answers_a_logged_in_user(client, login_required, user, path):
    client.force_login(user)
    assert client.get(path).status_code == 200


@pytest.mark.parametrize("path", API_PATHS)
def test_the_query_api_is_open_when_login_is_not_required(client, telemetry, path):
    telemetry(DASHBOARD_REQUIRE_LOGIN=False)
    assert client.get(path).status_code == 200


def test_the_dashboard_page_redirects_to_login_without_a_session(client, login_required):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=/")


def test_the_dashboard_page_renders_for_a_logged_in_user(client, login_required, user):
    client.force_login(user)
    assert client.get("/").status_code == 200


def test_ingestion_is_not_behind_the_dashboard_login(client, login_required, telemetry):
    telemetry(DASHBOARD_REQUIRE_LOGIN=True, REQUIRE_API_KEY=False)
    response = client.post(
        "/metrics/ingest",
        {"timestamp": "2026-11-28T00:00:00Z", "service": "api", "metric_type": "cpu", "value": 1},
        content_type="application/json",
    )
    assert response.status_code == 200


def _ok(request):
    return HttpResponse("done")


@pytest.mark.parametrize("require_login", [False, True])
def test_alert_actions_need_a_staff_user_whatever_the_login_setting(telemetry, user, staff, require_login):
    from django.contrib.auth.models import AnonymousUser

    telemetry(DASHBOARD_REQUIRE_LOGIN=require_login)
    factory = RequestFactory()
    api_view, page_view = staff_required(_ok), alert_action_access(_ok)

    def call(view, who):
        request = factory.post("/alerts/1/acknowledge")
        request.user = who
        return view(request)

    assert call(api_view, AnonymousUser()).status_code == 401
    assert call(api_view, user).status_code == 403
    assert call(api_view, staff).status_code == 200
    assert call(page_view, AnonymousUser()).status_code == 302
    assert call(page_view, user).status_code == 403
    assert call(page_view, staff).status_code == 200
    assert [can_act_on_alerts(u) for u in (AnonymousUser(), user, staff)] == [False, False, True]


def test_the_admin_is_for_staff_only(client, user, staff):
    client.force_login(user)
    assert client.get("/admin/").status_code == 302
    client.force_login(staff)
    assert client.get("/admin/").status_code == 200
