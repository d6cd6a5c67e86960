"""OTLP bodies that used to cost memory, time or a 5xx: nested attributes, size caps, histogram edge cases.

Each test is a reproduction from the outside review (issue 14); sizes are
asserted through deterministic quantities (rendered tag length, points stored,
the rejection message), never RSS or time.
"""

from __future__ import annotations

import gzip

import pytest
from django.db import IntegrityError
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

from metrics.ingest import otlp, submit
from metrics.models import Point, SketchContribution

from .otlp_builders import gauge, histogram, nanos, nested, request, with_attribute

pytestmark = pytest.mark.django_db

NOW = "2026-11-28T12:00:30Z"
PROTOBUF = "application/x-protobuf"


@pytest.fixture(autouse=True)
def _fresh_cumulative_state(frozen):
    """The clock at NOW, and no cumulative OTLP series remembered from another test."""
    otlp.cumulative.clear()
    yield
    otlp.cumulative.clear()


def post(client, message, **headers: str):
    body = message if isinstance(message, bytes) else message.SerializeToString()
    return client.post("/v1/metrics", body, content_type=PROTOBUF, headers=headers)


def answer(response) -> ExportMetricsServiceResponse:
    assert response.status_code == 200, response.content
    return ExportMetricsServiceResponse.FromString(response.content)


def status_of(response) -> status_pb2.Status:
    return status_pb2.Status.FromString(response.content)


def cpu(attrs: dict | None = None) -> metrics_pb2.Metric:
    return gauge("system.cpu.utilization", "1", 0.5, NOW, attrs)


# --- Nested attributes (item 1) ------------------------------------------------------


def test_nested_attribute_values_render_once_so_their_length_is_linear_in_depth(client):
    assert (
        answer(post(client, request("api", with_attribute(cpu(), "path", nested(8))))).partial_success.error_message
        == ""
    )
    # Eight levels of brackets around "x": 2 * 8 + 3 characters, not JSON escaped inside JSON at every level.
    assert Point.objects.get().tags == {"path": '[[[[[[[["x"]]]]]]]]'}


def test_an_attribute_nested_27_deep_is_rejected_without_rendering_it(client):
    # The review's 188-byte body: 27 levels took 2 s and 480 MB when every level was rendered to text.
    message = request("api", with_attribute(cpu(), "deep", nested(27)), cpu())
    assert len(message.SerializeToString()) < 300
    reply = answer(post(client, message))
    assert reply.partial_success.rejected_data_points == 1
    assert "nest at most 8 deep" in reply.partial_success.error_message
    assert Point.objects.count() == 1


def test_deep_resource_attributes_other_than_service_name_are_never_rendered(client):
    message = request("api", cpu())
    message.resource_metrics[0].resource.attributes.append(KeyValue(key="deep", value=nested(27)))
    assert answer(post(client, message)).partial_success.rejected_data_points == 0
    assert Point.objects.count() == 1


def test_a_wide_map_attribute_stops_at_the_tag_value_length(client, telemetry):
    telemetry(MAX_TAG_VALUE_LENGTH=64)
    wide = AnyValue()
    for i in range(10_000):
        wide.kvlist_value.values.append(KeyValue(key=f"k{i}", value=AnyValue(int_value=i)))
    small = AnyValue()
    small.kvlist_value.values.append(KeyValue(key="a", value=AnyValue(int_value=1)))
    reply = answer(
        post(client, request("api", with_attribute(cpu(), "wide", wide), with_attribute(cpu(), "small", small)))
    )
    assert reply.partial_success.rejected_data_points == 1
    assert "tags.wide: longer than 64 characters" in reply.partial_success.error_message
    assert Point.objects.get().tags == {"small": '{"a":1}'}


def test_attributes_beyond_the_tag_cap_are_refused_before_they_are_read(client):
    metric = cpu({f"k{i}": "v" for i in range(5_000)})
    reply = answer(post(client, request("api", metric)))
    assert reply.partial_success.rejected_data_points == 1
    assert "at most 16 tags, got 5000" in reply.partial_success.error_message


# --- Size caps (item 3) ----------------------------------------------------------------


def many_points(n: int) -> bytes:
    metric = metrics_pb2.Metric(name="system.cpu.utilization", unit="1")
    for _ in range(n):
        metric.gauge.data_points.add(time_unix_nano=nanos(NOW), as_double=0.5)
    return request("api", metric).SerializeToString()


def test_a_small_gzip_body_expanding_past_ingest_max_points_is_413_and_stores_nothing(client):
    body = gzip.compress(many_points(50_001), compresslevel=9)
    assert len(body) < 4096  # the review's was 1.2 KB
    response = post(client, body, **{"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "Retry-After" not in response  # not retryable in OTLP/HTTP: the client must split the batch
    assert "50001 > 10000" in status_of(response).message
    assert Point.objects.count() == 0


def test_ingest_max_points_applies_to_otlp_data_points(client, telemetry):
    telemetry(INGEST_MAX_POINTS=3)
    assert post(client, many_points(3)).status_code == 200
    assert post(client, many_points(4)).status_code == 413
    assert Point.objects.count() == 3


def test_histograms_with_more_buckets_than_the_cap_are_rejected(client, telemetry):
    telemetry(OTLP_MAX_HISTOGRAM_BUCKETS=4)
    fits = histogram("http.server.duration", "ms", [1, 2, 3], [1, 1, 1, 1], 8, NOW)
    over = histogram("http.server.duration", "ms", [1, 2, 3, 4], [1, 1, 1, 1, 1], 10, NOW)
    reply = answer(post(client, request("api", fits, over)))
    assert reply.partial_success.rejected_data_points == 1
    assert "5 buckets; a histogram has at most 4" in reply.partial_success.error_message
    assert Point.objects.count() == 1


# --- Histogram edge cases (item 7) ------------------------------------------------------


def test_a_bucket_count_of_2_to_the_64_minus_1_is_a_rejected_point_not_a_500(client):
    metric = histogram("http.server.duration", "ms", [10], [1, 0], 5, NOW)
    dp = metric.histogram.data_points[0]
    dp.bucket_counts[1] = 2**64 - 1
    dp.count = 2**64 - 1
    reply = answer(post(client, request("api", metric)))
    assert reply.partial_success.rejected_data_points == 1
    assert "below 2^53" in reply.partial_success.error_message
    assert Point.objects.count() == 0


def test_nan_explicit_bounds_are_a_rejected_point_not_a_503(client):
    metric = histogram("http.server.duration", "ms", [float("nan"), 20], [1, 1, 0], 20, NOW)
    response = post(client, request("api", metric))
    assert "Retry-After" not in response
    reply = answer(response)
    assert reply.partial_success.rejected_data_points == 1
    assert "explicit_bounds must be finite" in reply.partial_success.error_message
    assert SketchContribution.objects.count() == 0


@pytest.mark.parametrize(
    ("low", "high", "problem"),
    [
        (1.0, 1e300, "max must be a finite number with magnitude <= 1e+15"),
        (-5.0, 20.0, "min is outside the range of latency"),
        (20.0, 1.0, "min must not exceed max"),
        (11.0, 20.0, "sum / count must lie between min and max"),
    ],
)
def test_min_and_max_are_range_checked(client, low, high, problem):
    metric = histogram("http.server.duration", "ms", [10], [2, 3], 50, NOW, low=low, high=high)
    reply = answer(post(client, request("api", metric)))
    assert reply.partial_success.rejected_data_points == 1
    assert problem in reply.partial_success.error_message
    assert SketchContribution.objects.count() == 0


def test_a_count_that_disagrees_with_the_buckets_is_rejected(client):
    metric = histogram("http.server.duration", "ms", [10], [2, 3], 50, NOW)
    metric.histogram.data_points[0].count = 2**41 + 12
    reply = answer(post(client, request("api", metric)))
    assert "bucket_counts must add up to count" in reply.partial_success.error_message
    assert Point.objects.count() == 0


def test_more_observations_than_a_rollup_can_count_are_rejected(client):
    # Consistent buckets, but 2^41 observations: the review's rollup stored count=2199023255564.
    metric = histogram("http.server.duration", "ms", [10], [2**41, 12], 2.0**41 * 5, NOW)
    reply = answer(post(client, request("api", metric)))
    assert reply.partial_success.rejected_data_points == 1
    assert f"at most {2**31 - 1}" in reply.partial_success.error_message
    assert SketchContribution.objects.count() == 0


def test_a_database_error_caused_by_the_data_is_a_400_not_unavailable(client, monkeypatch):
    def refuse(*args, **kwargs):
        raise IntegrityError("NOT NULL constraint failed: metrics_sketchcontribution.min")

    monkeypatch.setattr(submit, "store", refuse)
    response = post(client, request("api", cpu()))
    assert response.status_code == 400
    assert "Retry-After" not in response
    assert status_of(response).code == code_pb2.INVALID_ARGUMENT
    assert "IntegrityError" in status_of(response).message
    assert otlp.cumulative.bytes == 0
