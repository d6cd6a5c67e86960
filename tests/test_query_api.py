"""POST/GET /metrics/query: raw points, exact buckets, rollup buckets, and bad input.

Clock frozen at NOW; points are written through store() with literal timestamps.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from metrics.ingest.store import store
from metrics.models import RollupState
from metrics.points import Row
from metrics.series import rollups

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]

NOW = datetime(2026, 11, 28, 12, 0, 30, tzinfo=UTC)
URL = "/metrics/query"


def put(values, start: datetime, step: float = 1.0, service="api", metric_type="latency", tags=None):
    store(
        [
            Row(start + timedelta(seconds=step * i), service, metric_type, float(v), tags or {})
            for i, v in enumerate(values)
        ]
    )


def query(client, **params):
    response = client.post(URL, json.dumps(params), content_type="application/json")
    assert response.status_code == 200, response.content
    return response.json()


def bad(client, field: str, **params) -> dict:
    response = client.post(URL, json.dumps(params), content_type="application/json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] and any(d["field"] == field for d in body["details"]), body
    return body


T = "2026-11-28T11:{:02d}:00Z".format


# --- raw -----------------------------------------------------------------------------


def test_raw_returns_points_oldest_first_with_all_fields(client):
    put([3, 2, 1], datetime(2026, 11, 28, 11, 10, tzinfo=UTC), tags={"region": "eu"})
    put([9], datetime(2026, 11, 28, 11, 5, tzinfo=UTC), service="auth")
    body = query(client, start_time=T(0), end_time=T(30), aggregation="raw")
    assert body["truncated"] is False and body["source"] == "raw"
    assert body["data"][0] == {
        "timestamp": "2026-11-28T11:05:00Z",
        "service": "auth",
        "metric_type": "latency",
        "value": 9.0,
        "tags": {},
    }
    assert [p["value"] for p in body["data"]] == [9, 3, 2, 1]
    assert body["data"][1]["tags"] == {"region": "eu"}


def test_raw_is_capped_by_limit_and_says_truncated(client):
    put(range(20), datetime(2026, 11, 28, 11, 10, tzinfo=UTC))
    body = query(client, start_time=T(0), end_time=T(30), limit=5)
    assert len(body["data"]) == 5 and body["truncated"] is True
    assert [p["value"] for p in body["data"]] == [0, 1, 2, 3, 4]
    assert query(client, start_time=T(0), end_time=T(30), limit=20)["truncated"] is False


def test_raw_default_limit_comes_from_settings(client, telemetry):
    telemetry(QUERY_DEFAULT_LIMIT=3)
    put(range(5), datetime(2026, 11, 28, 11, 10, tzinfo=UTC))
    body = query(client, start_time=T(0), end_time=T(30))
    assert len(body["data"]) == 3 and body["truncated"] is True


def test_filters_by_services_and_metric_types(client):
    start = datetime(2026, 11, 28, 11, 10, tzinfo=UTC)
    put([1], start, service="api")
    put([2], start, service="auth")
    put([3], start, service="api", metric_type="cpu")
    body = query(client, start_time=T(0), end_time=T(30), services=["api"], metric_types=["latency"])
    assert [p["value"] for p in body["data"]] == [1]
    body = query(client, start_time=T(0), end_time=T(30), services=None, metric_types=None)
    assert len(body["data"]) == 3


def test_a_raw_range_includes_both_its_start_and_its_end(client):
    put([1, 2, 3], datetime(2026, 11, 28, 11, 10, tzinfo=UTC), step=60)
    body = query(client, start_time=T(10), end_time=T(11))
    assert [p["value"] for p in body["data"]] == [1, 2]


def test_a_point_ingested_at_t_is_in_a_raw_query_that_ends_at_t(client):
    # The older service's clients ingest, then read back up to the same instant.
    at = "2026-11-28T11:59:30.500000Z"
    response = client.post(
        "/metrics/ingest",
        json.dumps({"service": "api", "metric_type": "cpu", "value": 7, "timestamp": at}),
        content_type="application/json",
    )
    assert response.status_code in (200, 201), response.content
    assert [p["value"] for p in query(client, end_time=at)["data"]] == [7]
    assert [p["value"] for p in query(client, start_time=at, end_time=at)["data"]] == [7]


def test_start_equal_to_end_is_valid_for_raw_and_400_for_buckets(client):
    put([1], datetime(2026, 11, 28, 11, 10, tzinfo=UTC))
    assert [p["value"] for p in query(client, start_time=T(10), end_time=T(10))["data"]] == [1]
    for aggregation in ("1m", "5m", "1h", "auto"):
        bad(client, "end_time", start_time=T(10), end_time=T(10), aggregation=aggregation)


def test_bucketed_ranges_keep_start_inclusive_end_exclusive_buckets(client):
    put([1, 2], datetime(2026, 11, 28, 11, 10, tzinfo=UTC), step=60)
    rows = query(client, start_time=T(10), end_time=T(11), aggregation="1m")["data"]
    assert [(r["timestamp"], r["count"]) for r in rows] == [("2026-11-28T11:10:00Z", 1)]


def test_default_range_is_the_last_hour(client):
    put([1], NOW - timedelta(minutes=90))
    put([2], NOW - timedelta(minutes=30))
    assert [p["value"] for p in query(client)["data"]] == [2]


# --- bucketed --------------------------------------------------------------------------


def test_bucketed_rows_have_the_documented_shape_and_exact_percentiles(client):
    rng = np.random.default_rng(1)
    values = rng.lognormal(5, 0.8, 600)
    put(values, datetime(2026, 11, 28, 11, 0, tzinfo=UTC), step=0.5)  # 11:00:00 .. 11:04:59.5
    body = query(client, start_time=T(0), end_time=T(10), aggregation="1m")
    assert body["source"] == "raw" and body["bucket_seconds"] == 60
    assert len(body["data"]) == 5
    for i, row in enumerate(body["data"]):
        assert set(row) == {"timestamp", "service", "metric_type", "p50", "p95", "p99", "min", "max", "avg", "count"}
        chunk = values[i * 120 : (i + 1) * 120]
        assert row["timestamp"] == T(i)
        assert row["count"] == 120
        # Exact: numpy's own answer, to floating-point precision.
        assert [row["p50"], row["p95"], row["p99"]] == pytest.approx(np.percentile(chunk, [50, 95, 99]), rel=1e-12)
        assert row["min"] == chunk.min() and row["max"] == chunk.max()
        assert row["avg"] == pytest.approx(chunk.mean())


def test_buckets_are_per_series_and_oldest_first(client):
    start = datetime(2026, 11, 28, 11, 0, tzinfo=UTC)
    for service in ("b", "a"):
        put([1, 2, 3, 4], start, step=120, service=service)
    rows = query(client, start_time=T(0), end_time=T(10), aggregation="5m")["data"]
    assert [(r["timestamp"], r["service"], r["count"]) for r in rows] == [
        (T(0), "a", 3),
        (T(0), "b", 3),
        (T(5), "a", 1),
        (T(5), "b", 1),
    ]


def test_long_ranges_come_from_rollups_and_say_so(client, telemetry):
    telemetry(QUERY_RAW_MAX_SECONDS=3600)
    rng = np.random.default_rng(2)
    values = rng.lognormal(4, 0.5, 400)
    put(values, NOW - timedelta(hours=2), step=9)  # one point every 9 s for an hour
    rollups.roll_up()
    start, end = (NOW - timedelta(hours=3)).replace(second=0), NOW.replace(second=0)
    body = query(client, start_time=start.isoformat(), end_time=end.isoformat(), aggregation="1h")
    assert body["source"] == "rollup"
    assert sum(r["count"] for r in body["data"]) == 400
    exact = query(client, start_time=start.isoformat(), end_time=end.isoformat(), aggregation="1h", exact=True)
    assert exact["source"] == "raw"
    for approx_row, exact_row in zip(body["data"], exact["data"], strict=True):
        for p in ("p50", "p95", "p99"):
            assert approx_row[p] == pytest.approx(exact_row[p], rel=0.0101)


def test_short_ranges_come_from_raw_points(client):
    put([1, 2, 3], NOW - timedelta(minutes=10))
    rollups.roll_up()
    body = query(client, start_time=T(0), end_time=T(59), aggregation="5m")
    assert body["source"] == "raw"


def test_beyond_the_raw_retention_answers_come_from_rollups_even_with_exact(client):
    start = NOW.replace(second=0) - timedelta(days=3)
    summaries = rollups.summarise(
        np.array(["api"] * 3, dtype=object),
        np.array(["latency"] * 3, dtype=object),
        np.array([start.timestamp() + 5] * 3),
        np.array([10.0, 20.0, 30.0]),
    )
    rollups._upsert(summaries)
    RollupState.objects.create(id=1, rolled_through=NOW.replace(second=0))
    body = query(
        client,
        start_time=start.isoformat(),
        end_time=(start + timedelta(hours=1)).isoformat(),
        aggregation="5m",
        exact=True,
    )
    assert body["source"] == "rollup"
    assert body["data"][0]["count"] == 3 and body["data"][0]["max"] == 30


@pytest.mark.parametrize(
    ("hours", "raw_ok"),
    [(0.25, True), (1, True), (6, False), (24, False), (72, False), (168, False)],
)
def test_auto_picks_about_300_buckets(client, hours, raw_ok):
    end = NOW.replace(second=0)
    start = end - timedelta(hours=hours)
    body = query(client, start_time=start.isoformat(), end_time=end.isoformat(), aggregation="auto")
    buckets = hours * 3600 / body["bucket_seconds"]
    assert 150 <= buckets <= 450, body["bucket_seconds"]
    if not raw_ok:
        assert body["bucket_seconds"] >= 60


def test_get_parameters_are_accepted(client):
    start = datetime(2026, 11, 28, 11, 10, tzinfo=UTC)
    put([1], start, service="api")
    put([2], start, service="auth")
    put([3], start, service="db")
    response = client.get(URL, {"start_time": T(0), "end_time": T(30), "services": "api,auth", "limit": "10"})
    assert response.status_code == 200
    assert sorted(p["value"] for p in response.json()["data"]) == [1, 2]
    response = client.get(URL, {"start_time": T(0), "end_time": T(30), "services": ["api", "db"]})
    assert sorted(p["value"] for p in response.json()["data"]) == [1, 3]
    response = client.get(URL, {"start_time": T(0), "end_time": T(30), "aggregation": "1m", "exact": "true"})
    assert sum(row["count"] for row in response.json()["data"]) == 3


def test_timestamps_on_the_wire_are_utc_with_z(client):
    put([1], datetime(2026, 11, 28, 11, 10, 0, 250000, tzinfo=UTC))
    body = query(client, start_time="2026-11-28T06:00:00-05:00", end_time="2026-11-28T06:30:00-05:00")
    assert body["data"][0]["timestamp"] == "2026-11-28T11:10:00.250000Z"


# --- bad input --------------------------------------------------------------------------


def test_end_before_start_is_400(client):
    bad(client, "end_time", start_time=T(30), end_time=T(0))


def test_spans_over_the_retention_are_400(client):
    bad(client, "start_time", start_time="2026-11-20T00:00:00Z", end_time="2026-11-28T00:00:00Z", aggregation="1h")
    bad(client, "start_time", start_time="2026-11-01T00:00:00Z", end_time="2026-11-02T00:00:00Z", aggregation="1h")


def test_raw_points_older_than_their_retention_are_400(client):
    bad(client, "start_time", start_time="2026-11-26T00:00:00Z", end_time="2026-11-26T01:00:00Z", aggregation="raw")


@pytest.mark.parametrize(
    ("field", "params"),
    [
        ("aggregation", {"aggregation": "2m"}),
        ("aggregation", {"aggregation": ["raw"]}),
        ("metric_types", {"metric_types": ["latency", "nope"]}),
        ("metric_types", {"metric_types": "nope"}),
        ("services", {"services": {"a": 1}}),
        ("services", {"services": [1, 2]}),
        ("services", {"services": ["bad name"]}),
        ("limit", {"limit": "abc"}),
        ("limit", {"limit": 0}),
        ("limit", {"limit": 1.5}),
        ("limit", {"limit": [5]}),
        ("limit", {"limit": True}),
        ("exact", {"exact": "maybe"}),
        ("start_time", {"start_time": "yesterday"}),
        ("start_time", {"start_time": {"a": 1}}),
        ("end_time", {"end_time": [1]}),
        ("bogus", {"bogus": 1}),
    ],
)
def test_bad_fields_are_400_naming_the_field(client, field, params):
    bad(client, field, **params)


def test_services_may_be_a_comma_separated_string(client):
    start = datetime(2026, 11, 28, 11, 10, tzinfo=UTC)
    put([1], start, service="api")
    put([2], start, service="auth")
    put([3], start, service="db")
    body = query(client, start_time=T(0), end_time=T(30), services="api,db")
    assert [p["service"] for p in body["data"]] == ["api", "db"]


def test_a_body_that_is_not_an_object_is_400(client):
    for body in (b"[]", b"5", b'"x"', b"{bad"):
        response = client.post(URL, body, content_type="application/json")
        assert response.status_code == 400, body


def test_non_json_content_type_is_415_and_other_methods_405(client):
    assert client.post(URL, "a=b", content_type="text/plain").status_code == 415
    response = client.put(URL)
    assert response.status_code == 405 and response["Allow"] == "GET, POST"


OUT_OF_RANGE_TIMES = [
    "0001-01-01",
    "0001-01-01T00:00:00+01:00",  # year 0 in UTC
    "0001-01-01T00:30:00Z",
    "1969-12-31T23:59:59Z",
    "9999-12-31",
    "9999-12-31T23:59:59.999999",
    "9999-12-31T23:59:59-01:00",  # year 10000 in UTC
    1e20,
    -1,
    100_000_000_001,
    2**70,
    "1e20",
    "99999999999999",
]


@pytest.mark.parametrize("value", OUT_OF_RANGE_TIMES, ids=str)
@pytest.mark.parametrize("field", ["start_time", "end_time"])
def test_times_that_cannot_be_used_are_400_naming_the_field_for_every_aggregation(client, field, value):
    other = "end_time" if field == "start_time" else "start_time"
    for aggregation in ("raw", "1m", "auto"):
        for params in ({field: value}, {field: value, other: T(0)}):
            body = bad(client, field, aggregation=aggregation, **params)
            assert body["details"][0]["field"] == field, body
            response = client.get(URL, {**{k: str(v) for k, v in params.items()}, "aggregation": aggregation})
            assert response.status_code == 400, response.content
            assert response.json()["details"][0]["field"] == field


def test_an_offset_that_leaves_the_calendar_says_out_of_range(client):
    body = bad(client, "end_time", end_time="0001-01-01T00:00:00+01:00")
    assert "out of range" in body["details"][0]["message"]
    body = bad(client, "start_time", start_time=2**70)
    assert "Unix seconds" in body["details"][0]["message"]


def test_bad_get_parameters_are_400_not_500(client):
    for params in ({"limit": "abc"}, {"start_time": "x"}, {"aggregation": "7d"}, {"exact": "2"}, {"zzz": "1"}):
        assert client.get(URL, params).status_code == 400, params


query_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
query_bodies = st.fixed_dictionaries(
    {},
    optional={
        "start_time": st.one_of(
            st.sampled_from(["2026-11-28T11:00:00Z", "2026-11-21T11:00:00Z", "0001-01-01", "9999-12-31"]),
            query_values,
        ),
        "end_time": st.one_of(
            st.sampled_from(["2026-11-28T12:00:00Z", "2026-11-28T11:00:00", "0001-01-01", "9999-12-31T23:59:59"]),
            query_values,
        ),
        "services": query_values,
        "metric_types": st.one_of(st.just(["latency"]), query_values),
        "aggregation": st.one_of(st.sampled_from(["raw", "1m", "5m", "1h", "auto"]), query_values),
        "limit": query_values,
        "exact": query_values,
    },
)


@hypothesis.settings(
    max_examples=100, deadline=None, suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture]
)
@hypothesis.given(body=query_bodies)
def test_no_query_body_produces_a_500(client, body):
    response = client.post(URL, json.dumps(body), content_type="application/json")
    assert response.status_code in (200, 400), (body, response.content)
