"""/metrics/openapi.json: a valid OpenAPI 3.1 document that matches the routes and real answers."""

from __future__ import annotations

import gzip

import pytest
import time_machine
from django.urls import URLPattern, URLResolver, get_resolver
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec

from metrics.api.openapi import document

pytestmark = pytest.mark.django_db

NOW = "2026-11-28T00:00:00Z"


@pytest.fixture
def spec(client):
    response = client.get("/metrics/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    return response.json()


def routes() -> set[str]:
    """Every concrete path under /metrics/ and /v1/: the root URLconf's and the ASGI route map's."""
    found: set[str] = set()

    def walk(patterns, prefix: str) -> None:
        for entry in patterns:
            route = prefix + str(entry.pattern)
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, route)
            elif isinstance(entry, URLPattern) and route.startswith(("metrics/", "v1/")):
                found.add("/" + route)

    walk(get_resolver().url_patterns, "")
    from telemetry_project.asgi import HTTP_ROUTES  # the ingest paths, routed before Django

    return found | set(HTTP_ROUTES)


def check(spec: dict, path: str, method: str, response) -> None:
    """The status is documented for the operation and the body matches its schema."""
    operation = spec["paths"][path][method.lower()]
    status = str(response.status_code)
    assert status in operation["responses"], f"{method} {path} answered undocumented {status}: {response.content[:300]}"
    content = operation["responses"][status].get("content", {})
    if "application/json" in content:
        assert response["Content-Type"].startswith("application/json")
        schema = {**content["application/json"]["schema"], "components": spec["components"]}
        OAS31Validator(schema).validate(response.json())


def test_it_serves_a_valid_openapi_31_document(spec):
    validate_spec(spec)
    assert spec["openapi"] == "3.1.0"


def test_every_route_is_documented_and_every_documented_path_exists(spec):
    assert routes() == set(spec["paths"])


def test_each_path_allows_exactly_the_documented_methods(client, spec):
    for path, operations in spec["paths"].items():
        documented = {m.upper() for m in operations}
        response = client.generic("DELETE", path)
        assert response.status_code == 405, path
        assert set(response["Allow"].replace(" ", "").split(",")) == documented, path


def test_success_answers_match_their_schemas(client, spec):
    points = [
        {"timestamp": NOW, "service": "api", "metric_type": "latency", "value": 1500.0, "tags": {"endpoint": "/x"}},
        {"timestamp": NOW, "service": "api", "metric_type": "cpu", "value": 12.5},
    ]
    with_time = {"start_time": "2026-11-27T23:00:00Z", "end_time": "2026-11-28T00:05:00Z"}
    with time_machine.travel(NOW, tick=False):
        ingest = client.post("/metrics/ingest", points, content_type="application/json")
        assert ingest.json()["alert"] is not None
        check(spec, "/metrics/ingest", "POST", ingest)
        check(spec, "/metrics/health", "GET", client.get("/metrics/health"))
        check(spec, "/metrics/services", "GET", client.get("/metrics/services"))
        alerts = client.get("/metrics/alerts")
        assert alerts.json()["alerts"]
        check(spec, "/metrics/alerts", "GET", alerts)
        check(spec, "/metrics/ping", "GET", client.get("/metrics/ping"))
        check(spec, "/metrics/openapi.json", "GET", client.get("/metrics/openapi.json"))
        raw = client.get("/metrics/query", with_time)
        assert len(raw.json()["data"]) == 2
        check(spec, "/metrics/query", "GET", raw)
        for aggregation in ("1m", "auto"):
            bucketed = client.post(
                "/metrics/query", {**with_time, "aggregation": aggregation}, content_type="application/json"
            )
            assert bucketed.json()["data"]
            check(spec, "/metrics/query", "POST", bucketed)
        rollup = client.post(
            "/metrics/query",
            {"start_time": "2026-11-27T00:00:00Z", "end_time": NOW, "aggregation": "1h"},
            content_type="application/json",
        )
        assert rollup.json()["source"] == "rollup"
        check(spec, "/metrics/query", "POST", rollup)


def test_error_answers_match_the_error_shape(client, spec):
    bad_point = {"service": "api", "metric_type": "nope", "value": 1}
    cases = [
        ("/metrics/ingest", "POST", client.post("/metrics/ingest", bad_point, content_type="application/json"), 400),
        ("/metrics/ingest", "POST", client.post("/metrics/ingest", "x=1", content_type="text/plain"), 415),
        ("/metrics/ingest", "POST", client.get("/metrics/ingest"), 405),
        ("/metrics/query", "GET", client.get("/metrics/query", {"aggregation": "2d"}), 400),
        ("/metrics/alerts", "GET", client.get("/metrics/alerts", {"limit": "0"}), 400),
    ]
    for path, method, response, status in cases:
        # A wrong 200 would match the success schema; the status is the contract.
        assert response.status_code == status, (path, response.status_code, response.content[:300])
        check(spec, path, method, response)


def test_the_otlp_receiver_answers_as_documented(client, spec):
    empty = client.post("/v1/metrics", b"{}", content_type="application/json")
    check(spec, "/v1/metrics", "POST", empty)
    assert empty.json() == {}
    check(spec, "/v1/metrics", "POST", client.post("/v1/metrics", b"{not json", content_type="application/json"))
    check(spec, "/v1/metrics", "POST", client.post("/v1/metrics", b"a", content_type="text/plain"))
    zipped = client.post(
        "/v1/metrics", gzip.compress(b"{}"), content_type="application/json", headers={"Content-Encoding": "gzip"}
    )
    check(spec, "/v1/metrics", "POST", zipped)


def test_the_document_is_built_from_the_settings_version(settings):
    assert document()["info"]["version"] == settings.TELEMETRY["VERSION"]


def test_login_required_reads_answer_a_documented_401(client, spec, telemetry):
    telemetry(DASHBOARD_REQUIRE_LOGIN=True)
    for path in ("/metrics/query", "/metrics/services", "/metrics/alerts"):
        response = client.get(path)
        assert response.status_code == 401
        check(spec, path, "GET", response)


def test_a_required_api_key_answers_a_documented_401(client, spec, telemetry):
    telemetry(REQUIRE_API_KEY=True)
    point = {"service": "api", "metric_type": "cpu", "value": 1}
    response = client.post("/metrics/ingest", point, content_type="application/json")
    assert response.status_code == 401
    check(spec, "/metrics/ingest", "POST", response)
    otlp = client.post("/v1/metrics", b"{}", content_type="application/json")
    assert otlp.status_code == 401
    check(spec, "/v1/metrics", "POST", otlp)
