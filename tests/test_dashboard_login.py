"""The dashboard's own login page (/login/, /logout/): viewers and staff.

Fixtures: `viewer` is an active non-staff user, `staff` a staff user, both
with the password PASSWORD (tests/support/users.py); `firing` opens one
critical alert through the one write path at NOW (the `frozen` clock), so the
panel has buttons to show or hide; `login_required` turns DASHBOARD_REQUIRE_LOGIN on.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from metrics.ingest.store import store
from metrics.ingest.validation import validate_points
from metrics.models import Alert
from tests.support.users import PASSWORD

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def login_required(telemetry):
    telemetry(DASHBOARD_REQUIRE_LOGIN=True)


@pytest.fixture
def firing(frozen):
    store(
        validate_points(
            [{"service": "api", "metric_type": "latency", "value": 1500.0, "timestamp": "2026-11-28T11:59:30Z"}]
        )
    )
    return Alert.objects.get(service="api")


def log_in(client, username: str, password: str = PASSWORD, next_url: str = "/"):
    return client.post("/login/", {"username": username, "password": password, "next": next_url})


def test_a_page_behind_login_redirects_to_the_dashboards_own_login_page(client, login_required):
    response = client.get("/services/api/?range=6h")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/services/api/%3Frange%3D6h"


def test_the_login_page_has_the_dashboards_dark_look_and_no_live_scripts(client, login_required):
    response = client.get("/login/?next=/")
    page = response.content.decode()
    assert response.status_code == 200
    assert "/static/css/dashboard.css" in page and 'class="topbar"' in page
    assert 'name="username"' in page and 'name="password"' in page and 'value="/"' in page
    # No WebSocket or chart code: an anonymous visitor would only be refused.
    assert "dashboard.js" not in page and 'id="connection"' not in page


def test_a_non_staff_viewer_logs_in_and_sees_the_dashboard_without_alert_buttons(
    client, login_required, viewer, firing
):
    response = log_in(client, "viewer")
    assert response.status_code == 302 and response["Location"] == "/"
    page = client.get("/").content.decode()
    assert "api latency 1500" in page
    assert "Acknowledge" not in page and "Resolve</button>" not in page
    assert "need a staff account" in page
    assert "(viewer)" in page and 'href="/admin/"' not in page


def test_a_logged_in_viewer_cannot_act_on_alerts(client, viewer, firing):
    log_in(client, "viewer")
    assert client.post(f"/alerts/{firing.pk}/acknowledge", {"page": "/"}).status_code == 403
    assert client.post(f"/alerts/{firing.pk}/resolve", {"page": "/"}, HTTP_HX_REQUEST="true").status_code == 403
    firing.refresh_from_db()
    assert firing.acknowledged_at is None and firing.state == Alert.FIRING


def test_a_logged_in_viewer_is_not_let_into_the_admin(client, viewer):
    log_in(client, "viewer")
    response = client.get("/admin/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_staff_log_in_on_the_same_page_and_get_the_alert_buttons(client, login_required, staff, firing):
    log_in(client, "oncall")
    page = client.get("/").content.decode()
    assert ">Acknowledge<" in page and 'href="/admin/"' in page
    assert client.post(f"/alerts/{firing.pk}/acknowledge", {"page": "/"}).status_code == 302
    firing.refresh_from_db()
    assert firing.acknowledged_by == "oncall"


def test_a_wrong_password_shows_the_form_again_with_an_error(client, login_required, viewer):
    response = log_in(client, "viewer", "wrong")
    assert response.status_code == 200
    assert "enter a correct username and password" in response.content.decode()
    assert client.get("/").status_code == 302


def test_login_does_not_redirect_off_site(client, viewer):
    response = log_in(client, "viewer", next_url="https://evil.example/")
    assert response.status_code == 302 and response["Location"] == "/"


def test_logging_out_is_a_post_that_ends_the_session(client, login_required, viewer):
    log_in(client, "viewer")
    assert client.get("/logout/").status_code == 405
    response = client.post("/logout/")
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 302
