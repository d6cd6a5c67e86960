"""POST /v1/metrics: encodings, compression and the answers the OTLP/HTTP specification asks for."""

from __future__ import annotations

import asyncio
import gzip

import orjson
import pytest
from django.utils import timezone
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

from metrics.ingest import otlp, submit
from metrics.models import ApiKey, Point

from .otlp_builders import gauge, histogram, request

pytestmark = pytest.mark.django_db

NOW = "2026-11-28T12:00:30Z"
PROTOBUF = "application/x-protobuf"


@pytest.fixture(autouse=True)
def _fresh_cumulative_state(frozen):
    """The clock at NOW, and no cumulative OTLP series remembered from another test."""
    otlp.cumulative.clear()


def post(client, body: bytes, content_type: str = PROTOBUF, **headers: str):
    return client.post("/v1/metrics", body, content_type=content_type, headers=headers)


def status_of(response) -> status_pb2.Status:
    status = status_pb2.Status()
    if response["Content-Type"] == PROTOBUF:
        status.ParseFromString(response.content)
    else:
        json_format.Parse(response.content, status)
    return status


def cpu_request(value: float = 0.25, service: str = "api"):
    return request(service, gauge("system.cpu.utilization", "1", value, NOW, {"cpu": 0}))


def test_it_accepts_protobuf_and_answers_an_empty_protobuf_response(client):
    response = post(client, cpu_request().SerializeToString())
    assert response.status_code == 200
    assert response["Content-Type"] == PROTOBUF
    assert response.content == ExportMetricsServiceResponse().SerializeToString() == b""
    point = Point.objects.get()
    assert (point.service, point.metric_type, point.value, point.tags) == ("api", "cpu", 25.0, {"cpu": 0})


def test_it_accepts_the_otlp_json_mapping(client):
    # lowerCamelCase keys, 64-bit integers as strings, enums as integers: as an SDK's JSON exporter sends it.
    body = {
        "resourceMetrics": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]},
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "http.server.request.duration",
                                "unit": "s",
                                "histogram": {
                                    "aggregationTemporality": 1,
                                    "dataPoints": [
                                        {
                                            "timeUnixNano": "1795867230000000000",
                                            "count": "4",
                                            "sum": 0.4,
                                            "bucketCounts": ["0", "4", "0"],
                                            "explicitBounds": [0.05, 0.2],
                                            "attributes": [{"key": "http.route", "value": {"stringValue": "/a"}}],
                                        }
                                    ],
                                },
                            }
                        ]
                    }
                ],
            }
        ]
    }
    response = post(client, orjson.dumps(body), "application/json")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json() == {}
    point = Point.objects.get()
    assert (point.service, point.metric_type, point.value, point.tags) == (
        "web",
        "latency",
        100.0,
        {"http.route": "/a"},
    )


def test_it_accepts_gzip_bodies(client):
    response = post(client, gzip.compress(cpu_request().SerializeToString()), **{"Content-Encoding": "gzip"})
    assert response.status_code == 200
    assert Point.objects.count() == 1


def test_it_reports_rejected_points_as_partial_success(client):
    message = request(
        "api",
        gauge("system.cpu.utilization", "1", 0.5, NOW),
        gauge("system.cpu.utilization", "1", 1.5, NOW),  # 150 %: out of range
        gauge("not.a.known.metric", "1", 1, NOW),
    )
    response = post(client, message.SerializeToString())
    assert response.status_code == 200
    answer = ExportMetricsServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_data_points == 1
    assert "value" in answer.partial_success.error_message
    assert "not.a.known.metric" in answer.partial_success.error_message
    assert list(Point.objects.values_list("value", flat=True)) == [50.0]


def test_partial_success_in_json_uses_the_json_mapping(client):
    body = json_format.MessageToJson(cpu_request(value=2.0))
    response = post(client, body.encode(), "application/json")
    assert response.status_code == 200
    assert response.json()["partialSuccess"]["rejectedDataPoints"] == "1"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"\xff\xff\xff", PROTOBUF), (b"{not json", "application/json"), (b'{"resourceMetrics": 5}', "application/json")],
)
def test_it_answers_400_with_a_status_for_undecodable_bodies(client, body, content_type):
    response = post(client, body, content_type)
    assert response.status_code == 400
    assert response["Content-Type"] == content_type
    assert "not a valid" in status_of(response).message
    assert Point.objects.count() == 0


def test_it_answers_400_for_broken_gzip(client):
    response = post(client, b"not gzip at all", **{"Content-Encoding": "gzip"})
    assert response.status_code == 400
    assert "gzip" in status_of(response).message


def test_it_answers_415_for_other_content_types_and_encodings(client):
    assert post(client, b"x", "text/plain").status_code == 415
    response = post(client, b"x", **{"Content-Encoding": "br"})
    assert response.status_code == 415
    assert "Content-Encoding" in status_of(response).message


def test_it_answers_405_to_other_methods(client):
    response = client.get("/v1/metrics")
    assert response.status_code == 405
    assert response["Allow"] == "POST"


def test_it_answers_413_without_retry_after_for_big_bodies_and_gzip_bombs(client, telemetry):
    # OTLP/HTTP retries only 429, 502, 503 and 504: a 413 must not invite a retry of the same body.
    telemetry(INGEST_MAX_BODY_BYTES=2048)
    big = post(client, b"\x00" * 4096)
    assert big.status_code == 413
    assert "Retry-After" not in big
    bomb = post(client, gzip.compress(b"\x00" * 100_000), **{"Content-Encoding": "gzip"})
    assert bomb.status_code == 413
    assert "Decompressed" in status_of(bomb).message


def test_it_answers_429_with_retry_after_over_the_service_cap(client, telemetry):
    telemetry(MAX_SERVICES=1)
    assert post(client, cpu_request(service="one").SerializeToString()).status_code == 200
    response = post(client, cpu_request(service="two").SerializeToString())
    assert response.status_code == 429
    assert response["Retry-After"] == "1"
    assert "Service limit" in status_of(response).message


def test_it_answers_401_without_a_valid_key_when_keys_are_required(client, telemetry):
    telemetry(REQUIRE_API_KEY=True)
    body = cpu_request().SerializeToString()
    missing = post(client, body)
    assert missing.status_code == 401
    assert status_of(missing).code == 16  # UNAUTHENTICATED
    assert post(client, body, Authorization="Bearer wrong").status_code == 401
    _, raw = ApiKey.generate("collector")
    assert post(client, body, Authorization=f"Bearer {raw}").status_code == 200
    assert Point.objects.count() == 1


def test_a_service_scoped_key_is_refused_403_for_another_service_and_nothing_is_stored(client, telemetry):
    telemetry(REQUIRE_API_KEY=True)
    _, raw = ApiKey.generate("collector", services="api")
    message = request("api", gauge("system.cpu.utilization", "1", 0.1, NOW))
    message.resource_metrics.extend(cpu_request(service="db").resource_metrics)
    response = post(client, message.SerializeToString(), **{"X-API-Key": raw})
    assert response.status_code == 403
    status = status_of(response)
    assert status.code == 7  # PERMISSION_DENIED
    assert "'db'" in status.message
    assert Point.objects.count() == 0
    own = post(
        client, request("api", gauge("system.cpu.utilization", "1", 0.1, NOW)).SerializeToString(), **{"X-API-Key": raw}
    )
    assert own.status_code == 200
    assert list(Point.objects.values_list("service", flat=True)) == ["api"]


def test_a_breaching_histogram_opens_an_alert(client):
    slow = histogram("http.server.request.duration", "s", [1.0, 2.0], [0, 10, 0], 15.0, NOW)
    assert post(client, request("api", slow).SerializeToString()).status_code == 200
    alerts = client.get("/metrics/alerts").json()["alerts"]
    assert [(a["service"], a["metric_type"], a["severity"], a["value"]) for a in alerts] == [
        ("api", "latency", "critical", 1500.0)
    ]


def test_the_request_is_mapped_before_it_is_queued_and_the_writer_only_checks_the_key_and_stores(client, monkeypatch):
    events: list[str] = []

    def spy(name, func):
        def wrapped(*args, **kwargs):
            events.append(name)
            return func(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(otlp, "map_request", spy("map", otlp.map_request))
    monkeypatch.setattr(submit, "authenticate_key", spy("key", submit.authenticate_key))
    monkeypatch.setattr(submit, "store", spy("store", submit.store))
    real_write = submit.write

    async def write(func, *args, weight, locks=()):
        events.append("queued")
        return await real_write(func, *args, weight=weight, locks=locks)

    monkeypatch.setattr(submit, "write", write)
    _, raw = ApiKey.generate("collector")
    assert post(client, cpu_request().SerializeToString(), **{"X-API-Key": raw}).status_code == 200
    assert events == ["map", "queued", "key", "store"]


@pytest.mark.parametrize(("padding", "on_event_loop"), [(0, True), (submit.INLINE_BODY_BYTES, False)])
def test_big_bodies_are_prepared_on_a_worker_thread_not_the_event_loop(client, monkeypatch, padding, on_event_loop):
    seen: list[bool] = []
    real_prepare = otlp.prepare

    def prepare(body, as_json):
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:
            seen.append(False)
        return real_prepare(body, as_json)

    monkeypatch.setattr(otlp, "prepare", prepare)
    message = cpu_request()
    message.resource_metrics[0].scope_metrics[0].metrics[0].description = "x" * padding
    assert post(client, message.SerializeToString()).status_code == 200
    assert seen == [on_event_loop]


def test_a_revoked_key_is_refused_on_the_next_request(client, telemetry):
    telemetry(REQUIRE_API_KEY=True)
    key, raw = ApiKey.generate("collector")
    assert post(client, cpu_request().SerializeToString(), **{"X-API-Key": raw}).status_code == 200
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    assert post(client, cpu_request().SerializeToString(), **{"X-API-Key": raw}).status_code == 401
