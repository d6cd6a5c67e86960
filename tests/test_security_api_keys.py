"""Ingest API keys: required by default in production, hashed, revocable at once, scoped to services."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from http.cookies import Morsel

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages.storage.cookie import CookieStorage
from django.utils import timezone

from metrics.models import ApiKey, Point, hash_key
from tests.live import ROOT

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]

# The points carry literal timestamps; the clock stands just after them so they
# stay inside the raw retention whatever day the suite runs.
NOW = datetime(2026, 11, 28, 0, 5, tzinfo=UTC)

POINT = {"timestamp": "2026-11-28T00:00:00Z", "service": "api", "metric_type": "latency", "value": 12.5}


@pytest.fixture
def keys_required(telemetry):
    return telemetry(REQUIRE_API_KEY=True)


def post(client, body=POINT, **headers):
    return client.post("/metrics/ingest", body, content_type="application/json", headers=headers)


def test_it_refuses_ingestion_without_a_key_when_keys_are_required(client, keys_required):
    response = post(client)
    assert response.status_code == 401
    assert response.json()["details"][0]["field"] == "Authorization"
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert Point.objects.count() == 0


def test_it_refuses_an_unknown_key(client, keys_required):
    ApiKey.generate("ci")
    response = post(client, Authorization="Bearer tm_not-a-real-key")
    assert response.status_code == 401
    assert "Invalid or revoked" in response.json()["error"]
    assert Point.objects.count() == 0


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_it_accepts_a_valid_key_in_either_header(client, keys_required, header):
    _, raw = ApiKey.generate("ci")
    value = f"Bearer {raw}" if header == "Authorization" else raw
    response = post(client, **{header: value})
    assert response.status_code == 200, response.content
    assert Point.objects.count() == 1


def test_a_revoked_key_stops_working_on_the_next_request(client, keys_required):
    key, raw = ApiKey.generate("ci")
    assert post(client, **{"X-API-Key": raw}).status_code == 200
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    response = post(client, **{"X-API-Key": raw})
    assert response.status_code == 401
    assert Point.objects.count() == 1


def test_a_bad_key_is_refused_even_when_keys_are_optional(client, telemetry):
    telemetry(REQUIRE_API_KEY=False)
    assert post(client).status_code == 200
    assert post(client, **{"X-API-Key": "tm_wrong"}).status_code == 401


def test_a_key_limited_to_other_services_is_forbidden_and_stores_nothing(client, keys_required):
    _, raw = ApiKey.generate("billing-only", services="billing, invoices")
    batch = [{**POINT, "service": "billing"}, {**POINT, "service": "api"}]
    response = post(client, batch, **{"X-API-Key": raw})
    assert response.status_code == 403
    body = response.json()
    assert body["details"] == [{"index": 1, "field": "service", "message": "key is limited to billing, invoices"}]
    assert Point.objects.count() == 0


def test_a_key_limited_to_a_service_may_write_that_service(client, keys_required):
    _, raw = ApiKey.generate("billing-only", services="billing")
    response = post(client, {**POINT, "service": "billing"}, **{"X-API-Key": raw})
    assert response.status_code == 200
    assert list(Point.objects.values_list("service", flat=True)) == ["billing"]


def test_only_the_hash_of_a_key_is_stored(keys_required):
    key, raw = ApiKey.generate("ci")
    key.refresh_from_db()
    assert key.key_hash == hash_key(raw) and raw not in key.key_hash
    assert key.prefix == raw[:10]
    assert not ApiKey.objects.filter(key_hash=raw).exists()


def test_it_records_when_a_key_was_last_used(client, keys_required):
    key, raw = ApiKey.generate("ci")
    assert key.last_used_at is None
    post(client, **{"X-API-Key": raw})
    key.refresh_from_db()
    assert key.last_used_at is not None


NEW_KEY = re.compile(r'value="(tm_[A-Za-z0-9_-]+)"')


@pytest.fixture
def admin_client(client):
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "pw"))
    return client


def test_the_admin_shows_a_new_key_once_in_the_page_and_stores_only_its_hash(admin_client):
    response = admin_client.post("/admin/metrics/apikey/add/", {"name": "ci", "services": "api", "scopes": "ingest"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    (raw,) = NEW_KEY.findall(response.content.decode())
    key = ApiKey.objects.get()
    assert key.key_hash == hash_key(raw) and key.services == "api" and key.scopes == "ingest"
    change_page = admin_client.get(f"/admin/metrics/apikey/{key.pk}/change/")
    assert raw not in change_page.content.decode()
    assert key.prefix in change_page.content.decode()


def test_a_new_key_never_travels_in_a_cookie_or_the_session(admin_client):
    response = admin_client.post("/admin/metrics/apikey/add/", {"name": "ci", "services": "", "scopes": "ingest,read"})
    (raw,) = NEW_KEY.findall(response.content.decode())
    # Cookies as sent, and messages as Django would decode them from its signed cookie.
    for morsel in response.cookies.values():
        assert raw not in morsel.value
    stored = CookieStorage(response.wsgi_request)._decode(admin_client.cookies.get("messages", Morsel()).value) or []
    assert not [m for m in stored if raw in str(m)]
    assert raw not in str(dict(admin_client.session.items()))
    # Nothing queued for the next page either (session-stored messages included).
    assert raw not in admin_client.get("/admin/metrics/apikey/").content.decode()


def test_the_admin_revoke_action_revokes_at_once(client, keys_required):
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    key, raw = ApiKey.generate("ci")
    client.force_login(admin)
    response = client.post("/admin/metrics/apikey/", {"action": "revoke", "_selected_action": [key.pk]}, follow=True)
    assert response.status_code == 200
    client.logout()
    assert post(client, **{"X-API-Key": raw}).status_code == 401


def _require_api_key_with(debug: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("REQUIRE_API_KEY", "DJANGO_SETTINGS_MODULE")}
    env.update(DEBUG=debug, SECRET_KEY="x" * 60, DJANGO_SETTINGS_MODULE="telemetry_project.settings")
    code = "from django.conf import settings; print(settings.TELEMETRY['REQUIRE_API_KEY'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_keys_are_required_by_default_when_debug_is_off():
    assert _require_api_key_with("0") == "True"
    assert _require_api_key_with("1") == "False"
