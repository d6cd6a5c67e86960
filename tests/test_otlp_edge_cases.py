"""OTLP data points at the edges of the data model, as an exporter sends them to POST /v1/metrics.

What an OpenTelemetry exporter relies on (metrics data model): delta sums are
rates over [start_time, time]; a cumulative stream restarts when its
start_time changes, and a counter that goes down has been reset; a point
flagged NO_RECORDED_VALUE (data point flags bit 1) is a gap, not a zero; a
histogram's min/max bound its observations, a missing sum is optional, and a
point that contradicts itself is refused in partial_success, never stored.
Bodies are built with tests/otlp_builders.py and posted through the ingest
route, so every test sees the receiver's answer as an exporter does.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import time_machine
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

from metrics.ingest import otlp
from metrics.models import Point, SketchContribution
from metrics.series import query, rollups

from .otlp_builders import CUMULATIVE, DELTA, counter, gauge, histogram, key_values, nanos, request

pytestmark = pytest.mark.django_db

NOW = "2026-11-28T12:00:30Z"
START = "2026-11-28T12:00:00Z"
PROTOBUF = "application/x-protobuf"
REQUESTS = "http.server.requests"  # throughput, any unit


@pytest.fixture(autouse=True)
def _frozen_clock_and_fresh_state():
    otlp.cumulative.clear()
    with time_machine.travel("2026-11-28T12:01:30Z", tick=False):
        yield
    otlp.cumulative.clear()


def export(client, *metrics: metrics_pb2.Metric, service: str | None = "api") -> metrics_pb2.Metric:
    """POST one ExportMetricsServiceRequest; the answer's partial_success."""
    body = request(service, *metrics).SerializeToString()
    response = client.post("/v1/metrics", body, content_type=PROTOBUF)
    assert response.status_code == 200, response.content
    return ExportMetricsServiceResponse.FromString(response.content).partial_success


def values(metric_type: str | None = None) -> list[float]:
    qs = Point.objects.order_by("timestamp", "id")
    if metric_type:
        qs = qs.filter(metric_type=metric_type)
    return list(qs.values_list("value", flat=True))


def cpu(value: float = 0.5, at: str = NOW) -> metrics_pb2.Metric:
    return gauge("system.cpu.utilization", "1", value, at)


# --- Attributes and the resource -----------------------------------------------------------


def test_a_nan_attribute_rejects_its_point_and_keeps_the_others(client):
    flagged = gauge("system.cpu.utilization", "1", 0.5, NOW, {"ratio": float("nan")})
    answer = export(client, flagged, cpu(0.25))
    assert answer.rejected_data_points == 1
    assert "tags.ratio: must be finite" in answer.error_message
    assert values() == [25.0]


def test_nan_inside_an_array_attribute_is_stored_as_null(client):
    metric = cpu()
    array = AnyValue()
    array.array_value.values.extend([AnyValue(double_value=1.5), AnyValue(double_value=float("nan"))])
    metric.gauge.data_points[0].attributes.append(KeyValue(key="samples", value=array))
    assert export(client, metric).rejected_data_points == 0
    assert Point.objects.get().tags == {"samples": "[1.5,null]"}


def test_a_map_attribute_is_stored_as_json_text(client):
    metric = cpu()
    kvlist = AnyValue()
    kvlist.kvlist_value.values.extend(key_values({"region": "eu", "zone": 3}))
    metric.gauge.data_points[0].attributes.append(KeyValue(key="where", value=kvlist))
    assert export(client, metric).rejected_data_points == 0
    assert Point.objects.get().tags == {"where": '{"region":"eu","zone":3}'}


@pytest.mark.parametrize(
    "name_value",
    [AnyValue(int_value=7), AnyValue(bool_value=True), AnyValue()],
    ids=["int", "bool", "empty"],
)
def test_a_service_name_that_is_not_a_string_rejects_the_resources_points(client, name_value):
    message = request(None, cpu(), cpu(0.7))
    message.resource_metrics[0].resource.attributes.append(KeyValue(key="service.name", value=name_value))
    response = client.post("/v1/metrics", message.SerializeToString(), content_type=PROTOBUF)
    answer = ExportMetricsServiceResponse.FromString(response.content).partial_success
    assert response.status_code == 200
    assert answer.rejected_data_points == 2
    assert "service.name (a string) is required" in answer.error_message
    assert Point.objects.count() == 0


# --- Sums: delta, cumulative, resets -----------------------------------------------------------


def test_a_delta_counter_is_its_value_over_its_own_interval(client):
    assert export(client, counter(REQUESTS, "{request}", 300, START, NOW, DELTA)).rejected_data_points == 0
    # The same delta again (the next interval of the same size) is the same rate, not a difference.
    later = counter(REQUESTS, "{request}", 300, NOW, "2026-11-28T12:01:00Z", DELTA)
    assert export(client, later).rejected_data_points == 0
    assert values("throughput") == [pytest.approx(10.0), pytest.approx(10.0)]
    assert otlp.cumulative.bytes == 0  # delta streams need no memory of earlier exports


def test_a_delta_counter_without_a_start_time_is_skipped_not_divided_by_zero(client):
    metric = counter(REQUESTS, "{request}", 300, START, NOW, DELTA)
    metric.sum.data_points[0].start_time_unix_nano = 0
    answer = export(client, metric, cpu())
    assert answer.rejected_data_points == 0
    assert values("throughput") == []
    assert values("cpu") == [50.0]


def test_a_new_start_time_restarts_a_cumulative_counter(client):
    export(client, counter(REQUESTS, "{request}", 60, START, "2026-11-28T12:00:20Z"))
    # The process restarted at 12:00:25 and has counted 100 since: 20 per second, not (100 - 60) / 10 s.
    restarted = "2026-11-28T12:00:25Z"
    assert export(client, counter(REQUESTS, "{request}", 100, restarted, NOW)).rejected_data_points == 0
    export(client, counter(REQUESTS, "{request}", 150, restarted, "2026-11-28T12:00:40Z"))
    assert values("throughput") == [pytest.approx(3.0), pytest.approx(20.0), pytest.approx(5.0)]


def test_a_counter_that_goes_down_is_a_reset_never_a_negative_rate(client):
    export(client, counter(REQUESTS, "{request}", 600, START, "2026-11-28T12:00:20Z"))
    # Same start_time, lower value: the counter was reset (Prometheus-style sources do this).
    answer = export(client, counter(REQUESTS, "{request}", 30, START, NOW))
    assert answer.rejected_data_points == 0, answer.error_message
    export(client, counter(REQUESTS, "{request}", 90, START, "2026-11-28T12:00:40Z"))
    rates = values("throughput")
    assert len(rates) == 3
    assert all(r >= 0 and math.isfinite(r) for r in rates)
    # After the reset the stream continues from the new value: 60 more over 10 s.
    assert rates[2] == pytest.approx(6.0)


def test_no_recorded_value_is_a_gap_not_a_zero(client):
    missing = cpu(0.0)
    missing.gauge.data_points[0].flags = metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
    answer = export(client, missing, cpu(0.3, "2026-11-28T12:00:31Z"))
    assert answer.rejected_data_points == 0
    assert answer.error_message == ""
    assert values("cpu") == [pytest.approx(30.0)]


def test_a_gap_in_a_cumulative_counter_does_not_reset_its_rate(client):
    export(client, counter(REQUESTS, "{request}", 600, START, "2026-11-28T12:00:20Z"))
    gap = counter(REQUESTS, "{request}", 0, START, NOW)
    gap.sum.data_points[0].flags = metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
    assert export(client, gap).rejected_data_points == 0
    export(client, counter(REQUESTS, "{request}", 800, START, "2026-11-28T12:00:40Z"))
    # 200 more over the 20 s since the last recorded value: the flagged zero was no reset.
    assert values("throughput") == [pytest.approx(30.0), pytest.approx(10.0)]


def test_a_data_point_without_a_value_is_rejected(client):
    empty = metrics_pb2.Metric(name="system.cpu.utilization", unit="1")
    empty.gauge.data_points.add(time_unix_nano=nanos(NOW))
    answer = export(client, empty, cpu(0.3))
    assert answer.rejected_data_points == 1
    assert "data point without a value" in answer.error_message
    assert values() == [pytest.approx(30.0)]


# --- Histograms ---------------------------------------------------------------------------


def percentiles(service: str = "api") -> dict:
    with time_machine.travel("2026-11-28T12:03:00Z", tick=False):
        rollups.roll_up()
        spec = query.parse_query(
            {
                "start_time": "2026-11-28T11:00:00Z",
                "end_time": "2026-11-28T12:03:00Z",
                "aggregation": "1h",
                "services": service,
                "metric_types": "latency",
            }
        )
        (bucket,) = query.run(spec)["data"]
    return bucket


def test_min_and_max_bound_the_percentiles_of_a_histogram(client):
    # 10 requests in the (100, 200] ms bucket, all observed between 120 and 130 ms.
    metric = histogram("http.server.duration", "ms", [100, 200], [0, 10, 0], 1250, NOW, low=120, high=130)
    assert export(client, metric).rejected_data_points == 0
    bucket = percentiles()
    assert bucket["count"] == 10
    assert bucket["avg"] == pytest.approx(125.0)
    # Without min/max the spread would cover (100, 200]; the sketch keeps ~1 % relative accuracy.
    for key in ("p50", "p95", "p99", "min", "max"):
        assert 120 * 0.98 <= bucket[key] <= 130 * 1.02, (key, bucket)


def test_a_histogram_without_a_sum_estimates_its_mean_from_the_buckets(client):
    metric = histogram("http.server.duration", "ms", [100, 200], [0, 4, 0], 0, NOW)
    metric.histogram.data_points[0].ClearField("sum")
    assert export(client, metric).rejected_data_points == 0
    # Spread evenly through (100, 200]: a mean near the middle, not 0 and not a refusal.
    assert values("latency") == [pytest.approx(150.0, rel=0.05)]
    assert percentiles()["count"] == 4


def test_a_histogram_with_count_and_sum_but_no_buckets_stores_its_mean(client):
    metric = metrics_pb2.Metric(name="http.server.duration", unit="ms")
    metric.histogram.aggregation_temporality = DELTA  # type: ignore[assignment]  # protobuf enums are ints at run time
    metric.histogram.data_points.add(time_unix_nano=nanos(NOW), start_time_unix_nano=nanos(START), count=4, sum=200)
    assert export(client, metric).rejected_data_points == 0
    assert values("latency") == [pytest.approx(50.0)]


@pytest.mark.parametrize(("bounds", "counts"), [([10, 20], [1, 2]), ([10], [1, 2, 3])], ids=["short", "long"])
def test_bucket_counts_that_do_not_match_the_bounds_are_rejected(client, bounds, counts):
    metric = histogram("http.server.duration", "ms", bounds, counts, 30, NOW)
    answer = export(client, metric, cpu())
    assert answer.rejected_data_points == 1
    assert "bucket_counts must have one more entry than explicit_bounds" in answer.error_message
    assert values("latency") == []
    assert SketchContribution.objects.count() == 0
    assert values("cpu") == [50.0]


def test_a_count_above_the_bucket_total_is_rejected_whatever_the_sum(client):
    metric = histogram("http.server.duration", "ms", [10], [2, 3], 50, NOW)
    metric.histogram.data_points[0].count = 6
    answer = export(client, metric)
    assert answer.rejected_data_points == 1
    assert "bucket_counts must add up to count" in answer.error_message
    assert Point.objects.count() == 0


def test_a_bucket_layout_change_between_cumulative_exports_keeps_count_and_sum_exact(client):
    first = histogram("http.server.duration", "ms", [100], [4, 0], 200, "2026-11-28T12:00:10Z", START, CUMULATIVE)
    # Same stream, new boundaries: 6 more observations (10 in all), the new ones adding 900 ms.
    relaid = histogram("http.server.duration", "ms", [50, 500], [4, 6, 0], 1100, NOW, START, CUMULATIVE)
    # Then 2 more in (50, 500], against the new layout.
    after = histogram(
        "http.server.duration", "ms", [50, 500], [4, 8, 0], 1500, "2026-11-28T12:00:50Z", START, CUMULATIVE
    )
    for metric in (first, relaid, after):
        answer = export(client, metric)
        assert answer.rejected_data_points == 0, answer.error_message
    # Each export's mean is of its new observations only.
    assert values("latency") == [pytest.approx(50.0), pytest.approx(150.0), pytest.approx(200.0)]
    # The minute holds the histogram's own count and mean (docs/send-metrics.md): the first four
    # observations are not counted twice, and the six of the re-laid export are not lost.
    bucket = percentiles()
    assert bucket["count"] == 12
    assert bucket["avg"] == pytest.approx(1500.0 / 12)
    assert 50 * 0.99 <= bucket["p50"] <= 500 * 1.01


def test_apportioned_buckets_add_up_to_the_new_observations():
    assert otlp.apportion(np.array([4, 6, 0]), 6).tolist() == [2, 4, 0]
    assert otlp.apportion(np.array([1, 1, 1]), 2).sum() == 2
    assert otlp.apportion(np.array([0, 7, 0]), 3).tolist() == [0, 3, 0]
