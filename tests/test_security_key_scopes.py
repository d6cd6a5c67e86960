"""API key scopes: `ingest` keys write, `read` keys read; a leaked agent key cannot read the data back.

Reading (query API and /metrics/prometheus) also takes HTTP basic auth with a
Django user, which is how Prometheus scrapers usually authenticate.
"""

from __future__ import annotations

import base64

import pytest
from django.contrib.auth import get_user_model

from metrics.api import auth
from metrics.errors import ApiError
from metrics.models import ApiKey, Point

from .otlp_builders import gauge, request

pytestmark = pytest.mark.django_db

NOW = "2026-11-28T00:05:00Z"
POINT = {"timestamp": "2026-11-28T00:00:00Z", "service": "api", "metric_type": "latency", "value": 12.5}
READ_PATHS = ["/metrics/query", "/metrics/services", "/metrics/alerts", "/metrics/prometheus"]


@pytest.fixture(autouse=True)
def _fresh_basic_auth(frozen):
    """The clock at NOW, and no basic-auth answer remembered from another test."""
    auth._basic_ok.clear()


@pytest.fixture
def login_required(telemetry):
    return telemetry(DASHBOARD_REQUIRE_LOGIN=True, REQUIRE_API_KEY=True)


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def basic(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


@pytest.mark.parametrize("path", READ_PATHS)
def test_every_read_endpoint_answers_401_without_credentials_when_login_is_required(client, login_required, path):
    response = client.get(path)
    assert response.status_code == 401
    assert response.json()["details"][0]["field"] == "session"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", READ_PATHS)
@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_a_read_key_reads_when_login_is_required(client, login_required, path, header):
    _, raw = ApiKey.generate("grafana", scopes="read")
    value = f"Bearer {raw}" if header == "Authorization" else raw
    assert client.get(path, headers={header: value}).status_code == 200


@pytest.mark.parametrize("path", READ_PATHS)
@pytest.mark.parametrize("require_login", [True, False])
def test_an_ingest_only_key_cannot_read(client, telemetry, path, require_login):
    telemetry(DASHBOARD_REQUIRE_LOGIN=require_login)
    _, raw = ApiKey.generate("agent", scopes="ingest")
    response = client.get(path, headers=bearer(raw))
    assert response.status_code == 403
    assert response.json()["details"][0]["field"] == "Authorization"
    assert "may not read" in response.json()["error"]


def test_an_unknown_key_is_refused_on_read_even_when_login_is_off(client, telemetry):
    telemetry(DASHBOARD_REQUIRE_LOGIN=False)
    assert client.get("/metrics/prometheus", headers=bearer("tm_wrong")).status_code == 401


def test_a_read_only_key_cannot_ingest_json(client, login_required):
    _, raw = ApiKey.generate("grafana", scopes="read")
    response = client.post("/metrics/ingest", POINT, content_type="application/json", headers=bearer(raw))
    assert response.status_code == 403
    assert "may not ingest" in response.json()["error"]
    assert Point.objects.count() == 0


def test_a_read_only_key_cannot_send_otlp(client, login_required):
    _, raw = ApiKey.generate("grafana", scopes="read")
    body = request("api", gauge("system.cpu.utilization", "1", 0.5, NOW)).SerializeToString()
    response = client.post("/v1/metrics", body, content_type="application/x-protobuf", headers=bearer(raw))
    assert response.status_code == 403
    assert Point.objects.count() == 0


def test_an_ingest_key_ingests_and_keys_default_to_both_scopes(client, login_required):
    _, agent = ApiKey.generate("agent", scopes="ingest")
    response = client.post("/metrics/ingest", POINT, content_type="application/json", headers=bearer(agent))
    assert response.status_code == 200
    legacy, raw = ApiKey.generate("created before scopes existed")
    assert legacy.has_scope("read") and legacy.has_scope("ingest")
    assert client.get("/metrics/prometheus", headers=bearer(raw)).status_code == 200


def test_key_authentication_checks_the_scope_asked_for(login_required):
    _, raw = ApiKey.generate("grafana", scopes="read")
    with pytest.raises(ApiError) as refused:
        ApiKey.authenticate(bearer(raw), ApiKey.INGEST)
    assert refused.value.status == 403
    assert ApiKey.authenticate(bearer(raw), ApiKey.READ).name == "grafana"


def test_basic_auth_with_a_django_user_reads_when_login_is_required(client, login_required):
    get_user_model().objects.create_user("prometheus", password="scrape-pw")
    assert client.get("/metrics/prometheus", headers=basic("prometheus", "scrape-pw")).status_code == 200
    assert client.get("/metrics/query", headers=basic("prometheus", "scrape-pw")).status_code == 200
    wrong = client.get("/metrics/prometheus", headers=basic("prometheus", "guess"))
    assert wrong.status_code == 401
    assert wrong.json()["details"][0]["field"] == "Authorization"
    assert client.get("/metrics/prometheus", headers={"Authorization": "Basic !!!"}).status_code == 401


def test_basic_auth_stops_working_when_the_user_is_deactivated(client, login_required):
    user = get_user_model().objects.create_user("prometheus", password="scrape-pw")
    assert client.get("/metrics/prometheus", headers=basic("prometheus", "scrape-pw")).status_code == 200
    user.is_active = False
    user.save()
    assert client.get("/metrics/prometheus", headers=basic("prometheus", "scrape-pw")).status_code == 401


def test_a_logged_in_session_may_scrape(client, login_required):
    client.force_login(get_user_model().objects.create_user("viewer", password="pw"))
    assert client.get("/metrics/prometheus").status_code == 200
