"""The DEBUG technical 500 page and error reports never show connection passwords or URLs.

`secrets` points DATABASE_URL, REDIS_URL and the channel layer's hosts at
URLs whose passwords are literal markers, so a test can look for them in the
rendered page.
"""

from __future__ import annotations

import sys

import pytest
from django.views.debug import get_default_exception_reporter_filter, technical_500_response

from telemetry_project.reporting import mask_url_passwords

DB_URL = "postgres://telemetry:db-pw-4711@postgres.internal:5432/telemetry"
REDIS_URL = "redis://:redis-pw-4712@redis.internal:6379/0"


@pytest.fixture
def secrets(settings):
    settings.DEBUG = True
    settings.DATABASE_URL = DB_URL
    settings.REDIS_URL = REDIS_URL
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
    }


def connect(dsn: str) -> None:
    raise ConnectionError("could not connect")


def render_500(rf) -> str:
    request = rf.get("/boom", HTTP_X_UPSTREAM=DB_URL)
    try:
        connect(DB_URL)  # the URL sits in a frame variable of the traceback
    except ConnectionError:
        response = technical_500_response(request, *sys.exc_info())
    assert response.status_code == 500
    return response.content.decode()


def test_the_debug_500_page_shows_no_connection_password_or_url(rf, secrets):
    page = render_500(rf)
    assert "Traceback" in page and "could not connect" in page
    for secret in ("db-pw-4711", "redis-pw-4712", DB_URL, REDIS_URL):
        assert secret not in page
    # The page still says where things are, only not how to get in.
    assert "postgres.internal" in page


def test_the_plain_text_report_hides_them_too(rf, secrets):
    request = rf.get("/boom", HTTP_ACCEPT="text/plain")
    try:
        connect(DB_URL)
    except ConnectionError:
        response = technical_500_response(request, *sys.exc_info())
    text = response.content.decode()
    assert "db-pw-4711" not in text and "redis-pw-4712" not in text


def test_connection_settings_are_hidden_and_paths_named_url_stay_readable(secrets, settings):
    safe = get_default_exception_reporter_filter().get_safe_settings()
    assert safe["DATABASE_URL"] == safe["REDIS_URL"] == "********************"
    assert safe["CHANNEL_LAYERS"]["default"]["CONFIG"]["hosts"] == [
        "redis://:********************@redis.internal:6379/0"
    ]
    assert safe["STATIC_URL"] == settings.STATIC_URL
    # dj-database-url puts the password in DATABASES under a key Django already hides.
    assert safe["DATABASES"]["default"].get("PASSWORD", "") in ("", "********************")


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgres://u:pw@h/db", "postgres://u:***@h/db"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://default:p%40ss@h:6380", "rediss://default:***@h:6380"),
        ("postgres://u@h/db", "postgres://u@h/db"),
        ("https://example.com/a:b@c", "https://example.com/a:b@c"),
        ("see postgres://a:b@h and redis://:c@r", "see postgres://a:***@h and redis://:***@r"),
    ],
)
def test_url_passwords_are_masked_wherever_they_appear(text, masked):
    assert mask_url_passwords(text, "***") == masked
