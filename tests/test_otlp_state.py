"""OTLP cumulative-to-delta state: recorded only for committed points, bounded in bytes, least recently used first out."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from metrics.ingest import otlp, submit
from metrics.models import ApiKey, Point

from .otlp_builders import CUMULATIVE, counter, histogram, request

pytestmark = pytest.mark.django_db

NOW = "2026-11-28T12:00:30Z"
START = "2026-11-28T12:00:00Z"
PROTOBUF = "application/x-protobuf"


@pytest.fixture(autouse=True)
def _fresh_cumulative_state(frozen):
    """The clock at NOW, and no cumulative OTLP series remembered from another test."""
    otlp.cumulative.clear()
    yield
    otlp.cumulative.clear()


def post(client, message, **headers: str):
    return client.post("/v1/metrics", message.SerializeToString(), content_type=PROTOBUF, headers=headers)


def requests_counter(value: int, service: str = "api", at: str = NOW):
    return request(service, counter("http.server.requests", "{request}", value, START, at))


def test_twenty_big_histograms_dated_1970_leave_no_state(client):
    # The review's reproduction: rejected cumulative histograms kept their bucket arrays for good.
    bounds = [float(b) for b in range(1, 256)]
    for i in range(20):
        old = histogram(
            "http.server.duration", "ms", bounds, [1] * 256, 30_000.0, "1970-01-01T00:00:10Z",
            "1970-01-01T00:00:00Z", CUMULATIVE, attrs={"i": i},
        )  # fmt: skip
        reply = post(client, request("api", old))
        assert reply.status_code == 200
    assert Point.objects.count() == 0
    assert otlp.cumulative.bytes == 0
    assert len(otlp.cumulative.last) == 0


def test_a_stored_cumulative_point_records_its_state_in_bytes(client):
    metric = histogram("http.server.duration", "ms", [10, 20], [1, 2, 3], 90, NOW, START, CUMULATIVE, high=30)
    assert post(client, request("api", metric)).status_code == 200
    (key,) = otlp.cumulative.last
    # Both arrays (3 counts, 2 bounds, 8 bytes each) are counted, besides the key.
    assert otlp.cumulative.bytes == otlp.entry_bytes(key, otlp.cumulative.last[key]) >= 5 * 8


def test_a_request_answered_503_leaves_no_state_and_its_retry_counts_from_the_start(client, monkeypatch):
    def unavailable(*args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(submit, "store", unavailable)
    assert post(client, requests_counter(600, at="2026-11-28T12:00:20Z")).status_code == 503
    assert otlp.cumulative.bytes == 0
    monkeypatch.undo()
    assert post(client, requests_counter(600, at="2026-11-28T12:00:20Z")).status_code == 200
    assert Point.objects.get().value == pytest.approx(
        30.0
    )  # 600 over 20 s since start, not a delta against the lost try


def test_a_request_refused_403_leaves_no_state(client, telemetry):
    telemetry(REQUIRE_API_KEY=True)
    _, raw = ApiKey.generate("collector", services="other")
    assert post(client, requests_counter(600), **{"X-API-Key": raw}).status_code == 403
    assert otlp.cumulative.bytes == 0


def test_the_state_is_bounded_in_bytes_and_forgets_the_least_recently_used_series(client, telemetry):
    one = otlp.entry_bytes(otlp._series_key("svc-0", "http.server.requests", {}), (0, 0, 0.0))
    telemetry(OTLP_CUMULATIVE_STATE_BYTES=3 * one)
    for i in range(3):
        post(client, requests_counter(600, service=f"svc-{i}", at="2026-11-28T12:00:10Z"))
    # svc-0 is used again, so svc-1 is now the least recently used.
    post(client, requests_counter(660, service="svc-0", at="2026-11-28T12:00:20Z"))
    post(client, requests_counter(600, service="svc-3", at="2026-11-28T12:00:20Z"))
    assert otlp.cumulative.bytes <= 3 * one
    assert sorted(key[0] for key in otlp.cumulative.last) == ["svc-0", "svc-2", "svc-3"]


def test_a_late_request_does_not_move_a_series_back_in_time():
    key = otlp._series_key("api", "http.server.requests", {})
    otlp.cumulative.update([(key, (1, 20, 660.0))])
    otlp.cumulative.update([(key, (1, 10, 600.0))])
    assert otlp.cumulative.get(key) == (1, 20, 660.0)
