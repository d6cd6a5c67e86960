"""The route map in front of the ingest app (metrics/api/ingest_app.py), and a real daphne with keys optional.

Every status and header of the ingest contract (statuses, error fields, keys,
the caps, CORS, HSTS, chunked and abandoned bodies) is pinned in
tests/test_ingest_parity.py, in process and against a live daphne, under
production-like settings (keys required). This module keeps what that table
does not: which paths the route map sends to the app, and what a server
with keys optional (REQUIRE_API_KEY off, the default when DEBUG is on) does
with an agent that sends none, or a wrong one.
"""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from metrics.api.ingest_app import ingest_app
from tests.live import LiveServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("direct")
    live = LiveServer(tmp, DATABASE_URL="", REDIS_URL="", DEBUG="1", REQUIRE_API_KEY="0").start()
    yield live
    live.stop()


def stored(server: LiveServer, service: str) -> int:
    with sqlite3.connect(server.tmp_path / "telemetry.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM metrics_point WHERE service = ?", [service]).fetchone()[0]


def test_the_route_map_sends_both_ingest_paths_and_nothing_else_to_the_ingest_app():
    from telemetry_project.asgi import HTTP_ROUTES

    assert {"/metrics/ingest": ingest_app, "/v1/metrics": ingest_app} == HTTP_ROUTES


def test_with_keys_optional_an_agent_without_a_key_is_stored(server):
    point = {"service": "direct-ok", "metric_type": "latency", "value": 12.5, "tags": {"region": "eu"}}
    response = httpx.post(server.url + "/metrics/ingest", json=[point, point])
    assert response.status_code == 200
    assert response.json() == {"status": "success", "accepted": 2, "alert": None, "alerts": []}
    assert stored(server, "direct-ok") == 2


def test_with_keys_optional_a_wrong_key_is_still_refused(server):
    point = {"service": "direct-wrong-key", "metric_type": "cpu", "value": 10}
    response = httpx.post(server.url + "/metrics/ingest", json=point, headers={"X-API-Key": "nope"})
    assert response.status_code == 401
    assert response.json()["details"][0]["field"] == "Authorization"
    assert stored(server, "direct-wrong-key") == 0
