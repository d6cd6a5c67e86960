"""The ingest ASGI app (metrics/api/ingest_app.py) behind POST /metrics/ingest, against a real daphne server.

Every client's request to the ingest paths is routed to it by path
(telemetry_project/asgi.py), agents and browsers alike; these pin its answer
for every status and its security and CORS headers.
"""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from metrics.api.ingest_app import ingest_app
from tests.live import LiveServer

POINT = {"timestamp": "2026-11-28T07:00:00Z", "service": "api", "metric_type": "latency", "value": 12.5}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("direct")
    live = LiveServer(tmp, DATABASE_URL="", REDIS_URL="", INGEST_MAX_BODY_BYTES="2048").start()
    yield live
    live.stop()


def stored(server: LiveServer, service: str) -> int:
    with sqlite3.connect(server.tmp_path / "telemetry.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM metrics_point WHERE service = ?", [service]).fetchone()[0]


def test_the_route_map_sends_both_ingest_paths_and_nothing_else_to_the_ingest_app():
    from telemetry_project.asgi import HTTP_ROUTES

    assert {"/metrics/ingest": ingest_app, "/v1/metrics": ingest_app} == HTTP_ROUTES


def test_a_point_posted_by_an_agent_is_committed_before_the_answer(server):
    point = {"service": "direct-ok", "metric_type": "latency", "value": 12.5, "tags": {"region": "eu"}}
    response = httpx.post(server.url + "/metrics/ingest", json=[point, point])
    assert response.status_code == 200
    assert response.json() == {"status": "success", "accepted": 2, "alert": None, "alerts": []}
    assert response.headers["x-content-type-options"] == "nosniff"
    assert stored(server, "direct-ok") == 2


def test_an_invalid_point_is_rejected_whole_with_the_field_named(server):
    good = {"service": "direct-bad", "metric_type": "cpu", "value": 10}
    bad = {"service": "direct-bad", "metric_type": "cpu", "value": 140}
    response = httpx.post(server.url + "/metrics/ingest", json=[good, bad])
    assert response.status_code == 400
    assert response.json()["details"][0]["index"] == 1
    assert response.json()["details"][0]["field"] == "value"
    assert stored(server, "direct-bad") == 0


def test_a_non_json_content_type_answers_415_in_the_error_shape(server):
    response = httpx.post(server.url + "/metrics/ingest", content=b"x=1", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["details"][0]["field"] == "Content-Type"


def test_a_body_over_the_limit_answers_413(server):
    body = b"[" + b",".join([b'{"service":"big","metric_type":"cpu","value":1}'] * 100) + b"]"
    response = httpx.post(server.url + "/metrics/ingest", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["details"][0]["field"] == "body"
    assert stored(server, "big") == 0


def test_invalid_json_answers_400_naming_the_body(server):
    response = httpx.post(
        server.url + "/metrics/ingest", content=b'{"service": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]


def test_a_wrong_api_key_is_refused_with_401(server):
    response = httpx.post(server.url + "/metrics/ingest", json=POINT, headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_browser_post_with_origin_is_stored_by_the_same_app(server):
    point = {"service": "direct-browser", "metric_type": "cpu", "value": 10}
    response = httpx.post(server.url + "/metrics/ingest", json=point, headers={"Origin": "http://elsewhere.example"})
    assert response.status_code == 200
    assert stored(server, "direct-browser") == 1


def test_a_get_on_the_ingest_path_answers_405_with_allow(server):
    response = httpx.get(server.url + "/metrics/ingest")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
