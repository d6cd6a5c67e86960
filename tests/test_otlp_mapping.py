"""metrics.ingest.otlp: how OTLP metrics map onto points, rates and histogram sketch contributions."""

from __future__ import annotations

import numpy as np
import pytest
import time_machine
from django.core.exceptions import ImproperlyConfigured

from metrics.ingest import otlp
from metrics.ingest.store import store
from metrics.models import Point, SketchContribution
from metrics.series import query, rollups, sketch

from .otlp_builders import CUMULATIVE, counter, gauge, histogram, request

pytestmark = pytest.mark.django_db

NOW = "2026-11-28T12:00:30Z"
START = "2026-11-28T12:00:00Z"
LATENCY_BOUNDS = [0.05, 0.1, 0.5, 1.0]
LATENCY_COUNTS = [0, 50, 40, 10, 0]  # 100 requests: 50 in (50,100] ms, 40 in (100,500], 10 in (500,1000]
LATENCY_SUM = 50 * 0.075 + 40 * 0.3 + 10 * 0.75


@pytest.fixture(autouse=True)
def _fresh_cumulative_state(frozen):
    """The clock at NOW, and no cumulative OTLP series remembered from another test."""
    otlp.cumulative.clear()
    yield
    otlp.cumulative.clear()


def ingest(message) -> otlp.Mapped:
    """The receiver's path without HTTP: map and validate, store, then record the cumulative state."""
    prepared = otlp.prepare_request(message)
    if prepared.rows:
        store(prepared.rows, contributions=prepared.contributions)
    otlp.cumulative.update(prepared.state)
    return prepared.mapped


def test_it_turns_a_seconds_histogram_into_its_mean_in_milliseconds():
    mapped = ingest(
        request("api", histogram("http.server.request.duration", "s", LATENCY_BOUNDS, LATENCY_COUNTS, LATENCY_SUM, NOW))
    )
    assert mapped.rejected == 0
    point = Point.objects.get()
    assert (point.service, point.metric_type) == ("api", "latency")
    assert point.value == pytest.approx(LATENCY_SUM / 100 * 1000)


def test_histogram_buckets_count_once_in_the_rollup_with_exact_count_and_sum():
    ingest(
        request("api", histogram("http.server.request.duration", "s", LATENCY_BOUNDS, LATENCY_COUNTS, LATENCY_SUM, NOW))
    )
    contribution = SketchContribution.objects.get()
    # The stored mean point stands for one observation; the contribution holds the other 99.
    assert contribution.count == 99
    assert sketch.count(contribution.sketch) == 99
    with time_machine.travel("2026-11-28T12:02:00Z", tick=False):
        rollups.roll_up()
    summary = rollups.fetch_rollups(rollups.from_epoch(0), rollups.from_epoch(4e9), ["api"], ["latency"])
    assert summary.count.tolist() == [100]
    assert summary.sum[0] == pytest.approx(LATENCY_SUM * 1000)


def test_histogram_percentiles_come_from_the_buckets_not_the_mean():
    ingest(
        request("api", histogram("http.server.request.duration", "s", LATENCY_BOUNDS, LATENCY_COUNTS, LATENCY_SUM, NOW))
    )
    with time_machine.travel("2026-11-28T12:02:00Z", tick=False):
        rollups.roll_up()
        spec = query.parse_query(
            {"start_time": "2026-11-28T10:00:00Z", "end_time": "2026-11-28T12:02:00Z", "aggregation": "1h"}
        )
        answer = query.run(spec)
    assert answer["source"] == "rollup"
    (bucket,) = answer["data"]
    assert bucket["count"] == 100
    assert 95 < bucket["p50"] <= 110  # between the top of (50, 100] ms and the bottom of (100, 500]
    assert 500 < bucket["p95"] <= 1000  # the 95th lies in (500, 1000] ms
    assert 500 < bucket["p99"] <= 1000
    assert bucket["avg"] == pytest.approx(LATENCY_SUM * 10)


def test_the_live_edge_merges_contributions_before_the_minute_is_rolled_up():
    ingest(
        request("api", histogram("http.server.request.duration", "s", LATENCY_BOUNDS, LATENCY_COUNTS, LATENCY_SUM, NOW))
    )
    spec = query.parse_query(
        {"start_time": "2026-11-28T10:00:00Z", "end_time": "2026-11-28T12:01:00Z", "aggregation": "1h"}
    )
    (bucket,) = query.run(spec)["data"]
    assert bucket["count"] == 100
    assert bucket["p95"] > 500


def test_cpu_and_memory_utilization_ratios_become_percent():
    ingest(
        request(
            "api",
            gauge("system.cpu.utilization", "1", 0.42, NOW),
            gauge("process.memory.utilization", "", 0.5, NOW),
        )
    )
    values = dict(Point.objects.values_list("metric_type", "value"))
    assert values == {"cpu": pytest.approx(42.0), "memory": pytest.approx(50.0)}


def test_millisecond_durations_are_kept_as_they_are():
    ingest(request("api", histogram("http.server.duration", "ms", [100, 200], [1, 1, 0], 250, NOW)))
    assert Point.objects.get().value == pytest.approx(125.0)


def test_unknown_metrics_and_units_that_do_not_fit_are_counted_and_ignored():
    mapped = ingest(
        request(
            "api",
            gauge("jvm.threads.count", "{thread}", 12, NOW),
            gauge("system.cpu.utilization", "By", 0.3, NOW),
        )
    )
    assert Point.objects.count() == 0
    assert mapped.rejected == 0
    assert mapped.unknown == {"jvm.threads.count": 1, "system.cpu.utilization [By]": 1}
    assert "ignored 2 unrecognised metric(s)" in otlp.summary_message(mapped)


def test_the_setting_adds_and_overrides_mappings(telemetry):
    telemetry(
        OTLP_METRIC_MAP={
            "queue.wait": {"metric_type": "latency", "unit": "s"},
            "load": {"metric_type": "cpu", "scale": 10},
        }
    )
    ingest(request("q", gauge("queue.wait", "", 0.25, NOW), gauge("load", "", 3.5, NOW)))
    assert dict(Point.objects.values_list("metric_type", "value")) == {"latency": 250.0, "cpu": 35.0}


def test_a_malformed_mapping_fails_loudly(telemetry):
    telemetry(OTLP_METRIC_MAP={"x": {"metric_type": "temperature"}})
    with pytest.raises(ImproperlyConfigured, match="metric_type"):
        otlp.map_request(request("api", gauge("x", "", 1, NOW)))


def test_cumulative_counters_become_per_second_rates():
    first = ingest(request("api", counter("http.server.requests", "{request}", 600, START, "2026-11-28T12:00:20Z")))
    assert first.rejected == 0
    ingest(request("api", counter("http.server.requests", "{request}", 660, START, NOW)))
    values = list(Point.objects.order_by("timestamp").values_list("metric_type", "value"))
    # First export: the average since the start (600 over 20 s); then the delta (60 over 10 s).
    assert values == [("throughput", pytest.approx(30.0)), ("throughput", pytest.approx(6.0))]


def test_cumulative_histograms_count_only_new_observations():
    first = histogram("http.server.duration", "ms", [100], [2, 0], 100, "2026-11-28T12:00:20Z", START, CUMULATIVE)
    second = histogram("http.server.duration", "ms", [100], [2, 2], 500, NOW, START, CUMULATIVE)
    same = histogram("http.server.duration", "ms", [100], [2, 2], 500, NOW, START, CUMULATIVE)
    ingest(request("api", first))
    ingest(request("api", second))
    mapped = ingest(request("api", same))  # no new observations: nothing to store
    assert mapped.skipped == 1
    assert list(Point.objects.order_by("timestamp").values_list("value", flat=True)) == [50.0, 200.0]


def test_attributes_become_tags_and_follow_the_json_api_limits():
    many = {f"k{i}": i for i in range(17)}
    mapped = ingest(
        request(
            "api",
            gauge("error_rate", "1", 0.01, NOW, {"http.route": "/users", "http.response.status_code": 500}),
            gauge("error_rate", "1", 0.02, NOW, many),
        )
    )
    assert mapped.rejected == 1
    assert "tags" in mapped.problems[0]
    assert Point.objects.get().tags == {"http.route": "/users", "http.response.status_code": 500}


def test_points_without_a_service_name_are_rejected():
    mapped = ingest(request(None, gauge("error_rate", "1", 0.01, NOW)))
    assert mapped.rejected == 1
    assert "service.name" in mapped.problems[0]


def test_histogram_buckets_spread_within_their_bounds():
    idx, counts = otlp.histogram_sketch(np.array([10.0, 20.0]), np.array([0, 100, 0]), 0.0, 30.0)
    assert counts.sum() == 100
    values = np.repeat(sketch.representative(idx), counts)
    assert values.min() >= 10 * 0.99 and values.max() <= 20 * 1.01
    assert np.median(values) == pytest.approx(15, rel=0.03)  # spread evenly, not piled at one end
