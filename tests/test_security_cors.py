"""CORS from CORS_ORIGINS with django-cors-headers: allowed origins echoed, foreign ones ignored, never '*'."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

ALLOWED = "https://status.example.com"
FOREIGN = "https://evil.example.net"


@pytest.fixture(autouse=True)
def cors(settings):
    settings.CORS_ALLOWED_ORIGINS = [ALLOWED]


def preflight(client, origin, path="/metrics/ingest", headers="content-type, x-api-key"):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": headers,
        },
    )


def test_a_preflight_from_an_allowed_origin_is_answered_with_that_origin(client):
    response = preflight(client, ALLOWED)
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == ALLOWED
    allowed_headers = {h.strip() for h in response["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "x-api-key", "authorization"} <= allowed_headers
    assert "POST" in response["Access-Control-Allow-Methods"]


def test_credentials_are_never_allowed_cross_origin(client):
    response = preflight(client, ALLOWED)
    assert "Access-Control-Allow-Credentials" not in response
    assert response["Access-Control-Allow-Origin"] != "*"


def test_a_preflight_from_a_foreign_origin_gets_no_cors_grant(client):
    response = preflight(client, FOREIGN)
    assert "Access-Control-Allow-Origin" not in response


def test_a_simple_request_from_a_foreign_origin_gets_no_cors_grant(client):
    response = client.get("/metrics/health", headers={"Origin": FOREIGN})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response
    response = client.get("/metrics/health", headers={"Origin": ALLOWED})
    assert response["Access-Control-Allow-Origin"] == ALLOWED


def test_cors_applies_to_the_api_only(client):
    response = preflight(client, ALLOWED, path="/admin/login/")
    assert "Access-Control-Allow-Origin" not in response


def test_no_origin_is_allowed_when_cors_origins_is_empty(client, settings):
    settings.CORS_ALLOWED_ORIGINS = []
    assert "Access-Control-Allow-Origin" not in preflight(client, ALLOWED)
