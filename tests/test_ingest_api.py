"""POST /metrics/ingest: the three body shapes, every error status, nothing stored on rejection.

The clock is frozen at NOW so "missing timestamp = now", "5 minutes in the
future" and "older than the retention" are literal comparisons.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import hypothesis
import pytest
from hypothesis import strategies as st

from metrics.models import Alert, Point, Service

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
URL = "/metrics/ingest"


def point(**overrides):
    base = {
        "timestamp": "2026-11-28T11:59:00Z",
        "service": "api",
        "metric_type": "latency",
        "value": 125.5,
        "tags": {"endpoint": "/users", "status_code": 200, "region": "us-east"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def post(client, payload, content_type="application/json"):
    """POST a JSON-encodable payload, or bytes/str sent as they are.

    The Content-Type header goes out even with an empty body: Django's test
    client drops it when the body is empty, and the server then rightly
    answers 415 instead of judging the (empty) JSON body.
    """
    body = payload if isinstance(payload, bytes | str) else json.dumps(payload)
    return client.post(URL, body, content_type=content_type, headers={"Content-Type": content_type})


def assert_error(response, status: int, index=..., field=None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["details"], list) and body["details"]
    for detail in body["details"]:
        assert set(detail) == {"index", "field", "message"}
    if field is not None:
        assert any(d["field"] == field and (index is ... or d["index"] == index) for d in body["details"]), body
    return body


# --- accepted shapes ---------------------------------------------------------------


def test_it_accepts_one_point_and_stores_it(client):
    response = post(client, point())
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "success", "accepted": 1, "alert": None, "alerts": []}
    stored = Point.objects.get()
    assert stored.to_dict() == {
        "timestamp": "2026-11-28T11:59:00Z",
        "service": "api",
        "metric_type": "latency",
        "value": 125.5,
        "tags": {"endpoint": "/users", "status_code": 200, "region": "us-east"},
    }


def test_it_accepts_an_array_of_points(client):
    response = post(client, [point(), point(metric_type="cpu", value=40), point(service="auth")])
    assert response.json()["accepted"] == 3
    assert Point.objects.count() == 3


def test_it_accepts_a_metrics_envelope(client):
    response = post(client, {"metrics": [point(), point(value=1)]})
    assert response.json()["accepted"] == 2


def test_it_accepts_the_configured_maximum_number_of_points(client, telemetry):
    telemetry(INGEST_MAX_POINTS=50)
    assert post(client, [point(value=i) for i in range(50)]).json()["accepted"] == 50


def test_a_naive_timestamp_is_utc(client):
    post(client, point(timestamp="2026-11-28T11:30:00"))
    assert Point.objects.get().timestamp == datetime(2026, 11, 28, 11, 30, tzinfo=UTC)


def test_an_offset_timestamp_is_stored_in_utc(client):
    post(client, point(timestamp="2026-11-28T06:30:00-05:00"))
    assert Point.objects.get().to_dict()["timestamp"] == "2026-11-28T11:30:00Z"


def test_a_missing_timestamp_means_now(client):
    post(client, point(timestamp=...))
    assert Point.objects.get().timestamp == NOW


def test_it_keeps_services_first_and_last_seen_current(client):
    post(client, [point(timestamp="2026-11-28T11:50:00Z"), point(timestamp="2026-11-28T11:55:00Z")])
    service = Service.objects.get(name="api")
    assert (service.first_seen, service.last_seen) == (
        datetime(2026, 11, 28, 11, 50, tzinfo=UTC),
        datetime(2026, 11, 28, 11, 55, tzinfo=UTC),
    )
    post(client, point(timestamp="2026-11-28T11:40:00Z"))  # late: moves first_seen only
    post(client, point(timestamp="2026-11-28T11:58:00Z"))
    service.refresh_from_db()
    assert service.first_seen == datetime(2026, 11, 28, 11, 40, tzinfo=UTC)
    assert service.last_seen == datetime(2026, 11, 28, 11, 58, tzinfo=UTC)


# --- the alert in the answer -----------------------------------------------------------


def test_the_answer_names_the_alert_a_point_opened(client):
    body = post(client, point(value=750)).json()
    alert = body["alert"]
    assert alert["service"] == "api" and alert["metric_type"] == "latency"
    assert (alert["severity"], alert["state"], alert["value"], alert["threshold"]) == ("warning", "firing", 750, 500)
    assert alert["timestamp"] == alert["started_at"] == "2026-11-28T11:59:00Z"
    assert alert["id"] == Alert.objects.get().pk
    assert body["alerts"] == [alert]


def test_the_answer_names_an_already_firing_alert_a_point_breached_again(client):
    first = post(client, point(value=750)).json()["alert"]
    again = post(client, point(value=800, timestamp="2026-11-28T11:59:30Z")).json()["alert"]
    assert again["id"] == first["id"]
    assert (again["breach_count"], again["latest_value"]) == (2, 800)
    assert Alert.objects.count() == 1


def test_a_healthy_point_answers_null_even_while_an_alert_fires(client):
    post(client, point(value=750))
    body = post(client, point(value=100, timestamp="2026-11-28T11:59:10Z")).json()
    assert body["alert"] is None and body["alerts"] == []
    assert Alert.objects.get().state == "firing"


def test_a_batch_breaching_two_series_lists_both(client):
    body = post(client, [point(value=750), point(metric_type="cpu", value=99), point(service="auth")]).json()
    assert {(a["metric_type"], a["severity"]) for a in body["alerts"]} == {("latency", "warning"), ("cpu", "critical")}
    assert body["alert"] in body["alerts"]


# --- rejections: nothing stored ----------------------------------------------------------


BAD_POINTS = [
    pytest.param(point(metric_type="latencyy"), "metric_type", id="unknown-metric-type"),
    pytest.param(point(metric_type=["latency"]), "metric_type", id="metric-type-list"),
    pytest.param(point(value="12"), "value", id="value-string"),
    pytest.param(point(value=None), "value", id="value-null"),
    pytest.param(point(value=True), "value", id="value-bool"),
    pytest.param(point(value=-1), "value", id="negative-latency"),
    pytest.param(point(metric_type="error_rate", value=1.5), "value", id="error-rate-above-1"),
    pytest.param(point(metric_type="cpu", value=101), "value", id="cpu-above-100"),
    pytest.param(point(metric_type="memory", value=-0.5), "value", id="memory-negative"),
    pytest.param(point(value=1e300), "value", id="huge-value"),
    pytest.param(point(service="bad name"), "service", id="service-space"),
    pytest.param(point(service="x" * 65), "service", id="service-too-long"),
    pytest.param(point(service=""), "service", id="service-empty"),
    pytest.param(point(service=...), "service", id="service-missing"),
    pytest.param(point(service=42), "service", id="service-number"),
    pytest.param(point(tags={f"k{i}": 1 for i in range(17)}), "tags", id="too-many-tags"),
    pytest.param(point(tags={"k" * 65: 1}), None, id="tag-key-too-long"),
    pytest.param(point(tags={"endpoint": "x" * 257}), "tags.endpoint", id="tag-value-too-long"),
    pytest.param(point(tags={"endpoint": {"a": 1}}), "tags.endpoint", id="tag-value-object"),
    pytest.param(point(tags={"endpoint": [1]}), "tags.endpoint", id="tag-value-array"),
    pytest.param(point(tags="a=b"), "tags", id="tags-string"),
    pytest.param(point(timestamp="not a time"), "timestamp", id="timestamp-garbage"),
    pytest.param(point(timestamp={"t": 1}), "timestamp", id="timestamp-object"),
    pytest.param(point(timestamp="2026-11-28T12:05:01Z"), "timestamp", id="more-than-5-min-future"),
    pytest.param(point(timestamp="2026-11-27T11:59:59Z"), "timestamp", id="older-than-retention"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_POINTS)
def test_a_bad_point_rejects_the_whole_request_naming_index_and_field(client, bad, field):
    response = post(client, [point(), point(service="auth"), bad])
    body = assert_error(response, 400, index=2, field=field)
    if field is None:
        assert all(d["index"] == 2 and d["field"].startswith("tags") for d in body["details"])
    assert Point.objects.count() == 0
    assert Service.objects.count() == 0
    assert Alert.objects.count() == 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"service": "api", "metric_type": "latency", "value": NaN}',
        b'[{"service": "api", "metric_type": "latency", "value": Infinity}]',
        b'{"service": "api", "metric_type": "latency", "value": -Infinity}',
    ],
    ids=["nan", "infinity", "minus-infinity"],
)
def test_nan_and_infinity_are_rejected_with_index_and_field(client, body):
    assert_error(post(client, body), 400, index=0, field="value")
    assert Point.objects.count() == 0


def test_a_breaching_point_in_a_rejected_request_opens_no_alert(client):
    assert_error(post(client, [point(value=5000), point(value=-1)]), 400, index=1, field="value")
    assert Alert.objects.count() == 0


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b" ",
        b"not json",
        b"[1, 2",
        b"\xff\xfe\x00",
        b'"a string"',
        b"42",
        b"null",
        b"[]",
        b'{"metrics": {}}',
        b"[5]",
    ],
)
def test_malformed_bodies_are_400_in_the_error_shape(client, body):
    assert_error(post(client, body), 400)
    assert Point.objects.count() == 0


def test_an_empty_json_body_is_a_400_naming_the_body(client):
    assert_error(post(client, b""), 400, field="body")


def test_body_over_the_size_limit_is_413(client, telemetry):
    telemetry(INGEST_MAX_BODY_BYTES=2048)
    response = post(client, [point(tags={"endpoint": "x" * 200}) for _ in range(20)])
    assert_error(response, 413)
    assert Point.objects.count() == 0


def test_too_many_points_is_413(client, telemetry):
    telemetry(INGEST_MAX_POINTS=5)
    assert_error(post(client, [point()] * 6), 413, field="metrics")
    assert Point.objects.count() == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_a_content_type_other_than_json_is_415(client, content_type):
    assert_error(post(client, json.dumps(point()), content_type=content_type), 415, field="Content-Type")
    assert Point.objects.count() == 0


def test_a_json_content_type_with_charset_is_accepted(client):
    response = post(client, point(), content_type="application/json; charset=utf-8")
    assert response.status_code == 200


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_other_methods_are_405_with_allow(client, method):
    response = getattr(client, method)(URL)
    assert_error(response, 405, field="method")
    assert response["Allow"] == "POST"


def test_it_never_answers_500_for_garbage(client):
    garbage = [
        [None, {}, [], "x", 1.5],
        {"metrics": [None]},
        {"service": {"a": 1}, "metric_type": {"b": 2}, "value": {"c": 3}, "timestamp": [1], "tags": [1]},
        [{"service": "api", "metric_type": "latency", "value": 1, "tags": {"": None}}],
        [{"service": "api", "metric_type": "latency", "value": 10**30}],
        [{"service": "api", "metric_type": "latency", "value": 1, "timestamp": 10**30}],
        [{"service": "api", "metric_type": "latency", "value": 1, "timestamp": "0001-01-01T00:00:00+01:00"}],
        [{"service": "api", "metric_type": "latency", "value": 1, "timestamp": "9999-12-31T23:59:59-01:00"}],
    ]
    for payload in garbage:
        response = post(client, payload)
        assert response.status_code == 400, (payload, response.content)
    assert Point.objects.count() == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
point_like = st.fixed_dictionaries(
    {},
    optional={
        "service": st.one_of(st.sampled_from(["api", "", "bad name"]), json_values),
        "metric_type": st.one_of(st.sampled_from(["latency", "cpu", "nope"]), json_values),
        "value": st.one_of(st.floats(allow_nan=False), json_values),
        "timestamp": st.one_of(st.sampled_from(["2026-11-28T11:59:00Z", "2026-11-28T11:59:00", "x"]), json_values),
        "tags": json_values,
    },
)


@hypothesis.settings(
    max_examples=100, deadline=None, suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture]
)
@hypothesis.given(payload=st.one_of(point_like, st.lists(point_like, max_size=4), json_values))
@hypothesis.example(payload="")  # the JSON string "", which once went out as an empty body (415)
def test_no_json_body_produces_a_500(client, payload):
    # Always JSON-encoded: a drawn str is a JSON value, not a raw body.
    response = post(client, json.dumps(payload))
    assert response.status_code in (200, 400), (payload, response.content)
