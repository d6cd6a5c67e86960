"""Login throttling (django-axes): five wrong passwords lock a username+address pair out for 15 minutes.

The admin login, any django.contrib.auth LoginView (the dashboard's /login/)
and basic auth on the read API all authenticate with the request, so all count.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm
from django.test import RequestFactory

from metrics.api import auth
from tests.support.users import PASSWORD

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
RIGHT, WRONG = PASSWORD, "guess"  # `staff` (oncall) has the password PASSWORD


@pytest.fixture(autouse=True)
def _fresh_basic_auth(frozen):
    """The clock at NOW, and no basic-auth answer remembered from another test."""
    auth._basic_ok.clear()


def admin_login(client, password: str, address: str = "10.0.0.1", username: str = "oncall"):
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password}, REMOTE_ADDR=address)


def logged_in(client) -> bool:
    return "_auth_user_id" in client.session


def test_six_wrong_admin_passwords_lock_out_the_right_one(client, staff):
    for _ in range(6):
        assert admin_login(client, WRONG).status_code in (200, 429)
        assert not logged_in(client)
    response = admin_login(client, RIGHT)
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    assert response["Retry-After"] == "900"
    assert not logged_in(client)


def test_four_wrong_passwords_still_let_the_right_one_in_and_success_resets_the_count(client, staff):
    for _ in range(4):
        admin_login(client, WRONG)
    assert admin_login(client, RIGHT).status_code == 302
    assert logged_in(client)
    client.logout()
    for _ in range(4):
        admin_login(client, WRONG)
    assert admin_login(client, RIGHT).status_code == 302


def test_the_lockout_ends_fifteen_minutes_after_the_last_attempt(client, staff, frozen):
    for _ in range(5):
        admin_login(client, WRONG)
    assert admin_login(client, RIGHT).status_code == 429
    # Knocking during the lockout starts the 15 minutes again (axes' default), so guessing never pays off.
    frozen.move_to(datetime(2026, 11, 28, 9, 14, tzinfo=UTC))
    assert admin_login(client, RIGHT).status_code == 429
    frozen.move_to(datetime(2026, 11, 28, 9, 28, tzinfo=UTC))
    assert admin_login(client, RIGHT).status_code == 429
    frozen.move_to(datetime(2026, 11, 28, 9, 44, tzinfo=UTC))
    assert admin_login(client, RIGHT).status_code == 302


def test_the_lockout_is_per_username_and_address(client, staff):
    get_user_model().objects.create_user("other", password=RIGHT, is_staff=True)
    for _ in range(5):
        admin_login(client, WRONG)
    assert admin_login(client, RIGHT, address="10.0.0.2").status_code == 302
    client.logout()
    assert admin_login(client, RIGHT, username="other").status_code == 302


def test_a_login_view_form_is_throttled_too(staff):
    """The dashboard's /login/ is a django.contrib.auth LoginView: its form authenticates with the request."""
    factory = RequestFactory()

    def attempt(password: str) -> bool:
        request = factory.post("/login/", REMOTE_ADDR="10.0.0.9")
        return AuthenticationForm(request, {"username": "oncall", "password": password}).is_valid()

    assert [attempt(WRONG) for _ in range(5)] == [False] * 5
    assert attempt(RIGHT) is False


def test_basic_auth_guessing_is_locked_out_with_a_json_429(client, staff, telemetry):
    telemetry(DASHBOARD_REQUIRE_LOGIN=True)

    def scrape(password: str):
        token = base64.b64encode(f"oncall:{password}".encode()).decode()
        return client.get("/metrics/prometheus", headers={"Authorization": f"Basic {token}"})

    assert [scrape(WRONG).status_code for _ in range(5)] == [401, 401, 401, 401, 429]
    locked = scrape(RIGHT)
    assert locked.status_code == 429
    assert locked.json()["details"][0]["field"] == "Authorization"


def test_the_test_clients_login_still_works_with_axes_on(client, staff):
    assert client.login(username="oncall", password=RIGHT) is True
    assert client.get("/admin/").status_code == 200
