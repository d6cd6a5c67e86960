"""Unit tests for metrics.ingest.validation: every bad-input class, named by index and field.

`NOW` is the literal clock every call uses, so future/retention checks need no sleeping.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from metrics.errors import ValidationErrors
from metrics.ingest.validation import extract_points, parse_json, validate_points
from metrics.points import parse_timestamp

NOW = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)


def point(**overrides):
    base = {"timestamp": "2026-01-15T11:59:00Z", "service": "api", "metric_type": "latency", "value": 125.5}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def rejected(points, **kwargs) -> ValidationErrors:
    with pytest.raises(ValidationErrors) as info:
        validate_points(points, now=NOW, **kwargs)
    assert info.value.status == 400
    return info.value


def only_detail(points) -> dict:
    exc = rejected(points)
    assert len(exc.details) == 1, exc.details
    return exc.details[0]


# --- body shapes ------------------------------------------------------------------


def test_it_accepts_one_point_an_array_and_a_metrics_envelope():
    p = point()
    assert extract_points(p, 10) == [p]
    assert extract_points([p, p], 10) == [p, p]
    assert extract_points({"metrics": [p]}, 10) == [p]


def test_it_rejects_json_that_is_not_an_object_or_array():
    with pytest.raises(ValidationErrors) as info:
        extract_points("hello", 10)
    assert info.value.details[0]["field"] == "body"


def test_it_rejects_a_metrics_envelope_that_is_not_an_array():
    with pytest.raises(ValidationErrors) as info:
        extract_points({"metrics": {"a": 1}}, 10)
    assert info.value.details[0]["field"] == "metrics"


def test_it_rejects_an_empty_batch():
    with pytest.raises(ValidationErrors) as info:
        extract_points([], 10)
    assert info.value.status == 400


def test_it_answers_413_for_too_many_points():
    with pytest.raises(ValidationErrors) as info:
        extract_points([point()] * 11, 10)
    assert info.value.status == 413


def test_it_rejects_invalid_json_and_an_empty_body():
    for body in (b"{", b"", b"[1,", b"\xff\xfe"):
        with pytest.raises(ValidationErrors) as info:
            parse_json(body)
        assert info.value.details[0]["field"] == "body"


def test_it_parses_nan_literals_so_the_point_check_can_name_them():
    payload = parse_json(b'[{"service": "api", "metric_type": "latency", "value": NaN}]')
    detail = only_detail(payload)
    assert detail["index"] == 0 and detail["field"] == "value"


def test_it_rejects_lone_surrogates_as_invalid_json():
    with pytest.raises(ValidationErrors):
        parse_json(b'{"service": "api", "tags": {"a": "\\ud800"}}')


# --- per-field checks ---------------------------------------------------------------


def test_it_accepts_a_valid_point_and_returns_a_utc_row():
    (row,) = validate_points([point(tags={"endpoint": "/users", "status_code": 200, "region": "us-east"})], now=NOW)
    assert row.timestamp == datetime(2026, 1, 15, 11, 59, tzinfo=UTC)
    assert row.service == "api" and row.metric_type == "latency" and row.value == 125.5
    assert row.tags == {"endpoint": "/users", "status_code": 200, "region": "us-east"}


def test_it_reads_a_naive_timestamp_as_utc():
    (row,) = validate_points([point(timestamp="2026-01-15T11:30:00")], now=NOW)
    assert row.timestamp == datetime(2026, 1, 15, 11, 30, tzinfo=UTC)


def test_it_converts_an_offset_timestamp_to_utc():
    (row,) = validate_points([point(timestamp="2026-01-15T13:30:00+02:00")], now=NOW)
    assert row.timestamp == datetime(2026, 1, 15, 11, 30, tzinfo=UTC)
    assert row.timestamp.utcoffset() == timedelta(0)


def test_a_missing_timestamp_means_now():
    (row,) = validate_points([point(timestamp=...)], now=NOW)
    assert row.timestamp == NOW


def test_it_rejects_a_point_that_is_not_an_object():
    assert only_detail([point(), 5]) == {"index": 1, "field": "point", "message": "expected an object"}


@pytest.mark.parametrize("metric_type", ["latencyy", "", None, 5, ["latency"], {"a": 1}])
def test_it_rejects_unknown_metric_types(metric_type):
    detail = only_detail([point(metric_type=metric_type)])
    assert (detail["index"], detail["field"]) == (0, "metric_type")


@pytest.mark.parametrize("value", ["12", None, True, [1], {"v": 1}])
def test_it_rejects_values_that_are_not_numbers(value):
    detail = only_detail([point(value=value)])
    assert (detail["index"], detail["field"]) == (0, "value")


def test_it_rejects_a_missing_value():
    assert only_detail([point(value=...)])["field"] == "value"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e300, 10**400])
def test_it_rejects_nan_infinity_and_absurd_magnitudes(value):
    detail = only_detail([point(value=value)])
    assert detail["field"] == "value" and "finite" in detail["message"]


@pytest.mark.parametrize(
    ("metric_type", "value"),
    [
        ("latency", -0.1),
        ("error_rate", -0.01),
        ("error_rate", 1.01),
        ("throughput", -1),
        ("cpu", 100.5),
        ("cpu", -1),
        ("memory", 101),
    ],
)
def test_it_rejects_values_outside_the_metric_types_range(metric_type, value):
    detail = only_detail([point(metric_type=metric_type, value=value)])
    assert (detail["index"], detail["field"]) == (0, "value")
    assert metric_type in detail["message"]


@pytest.mark.parametrize(
    ("metric_type", "value"),
    [("latency", 0), ("error_rate", 0), ("error_rate", 1), ("throughput", 0), ("cpu", 100), ("memory", 0)],
)
def test_it_accepts_the_range_edges(metric_type, value):
    assert len(validate_points([point(metric_type=metric_type, value=value)], now=NOW)) == 1


@pytest.mark.parametrize("service", ["", "a" * 65, "has space", "slash/es", "ünïcode", None, 7, "new\nline"])
def test_it_rejects_service_names_outside_the_allowed_pattern(service):
    detail = only_detail([point(service=service)])
    assert (detail["index"], detail["field"]) == (0, "service")


@pytest.mark.parametrize("service", ["a", "a" * 64, "api-gateway_v2.eu"])
def test_it_accepts_service_names_inside_the_pattern(service):
    assert validate_points([point(service=service)], now=NOW)[0].service == service


@pytest.mark.parametrize("timestamp", ["yesterday", "", "2026-13-01T00:00:00Z", [], {}, True, 1e13, -5])
def test_it_rejects_unparseable_timestamps(timestamp):
    detail = only_detail([point(timestamp=timestamp)])
    assert (detail["index"], detail["field"]) == (0, "timestamp")


def test_it_accepts_up_to_five_minutes_in_the_future_and_no_more():
    assert validate_points([point(timestamp="2026-01-15T12:05:00Z")], now=NOW)
    detail = only_detail([point(timestamp="2026-01-15T12:05:01Z")])
    assert detail["field"] == "timestamp" and "future" in detail["message"]


def test_a_naive_timestamp_too_far_ahead_says_naive_means_utc():
    # A client in UTC+9 sending its local wall-clock time without an offset.
    detail = only_detail([point(timestamp="2026-01-15T21:00:00")])
    assert "future" in detail["message"] and "naive timestamps" in detail["message"] and "UTC" in detail["message"]


def test_an_explicit_zone_too_far_ahead_gets_no_naive_hint():
    for timestamp in ("2026-01-15T21:00:00Z", "2026-01-15T21:00:00+00:00", NOW.timestamp() + 9 * 3600):
        detail = only_detail([point(timestamp=timestamp)])
        assert "future" in detail["message"] and "naive" not in detail["message"], timestamp


@pytest.mark.parametrize(
    "timestamp",
    [
        "0001-01-01",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59.999999",
        "9999-12-31T23:59:59-01:00",
        1e20,
        2**70,
        float("inf"),
    ],
    ids=str,
)
def test_times_outside_the_calendar_are_a_timestamp_error_not_an_exception(timestamp):
    detail = only_detail([point(timestamp=timestamp)])
    assert (detail["index"], detail["field"]) == (0, "timestamp")


def test_it_rejects_points_older_than_the_raw_retention(telemetry):
    telemetry(RAW_RETENTION_HOURS=24)
    assert validate_points([point(timestamp="2026-01-14T12:00:00Z")], now=NOW)
    detail = only_detail([point(timestamp="2026-01-14T11:59:59Z")])
    assert detail["field"] == "timestamp" and "retention" in detail["message"]


def test_it_accepts_unix_seconds_timestamps():
    (row,) = validate_points([point(timestamp=NOW.timestamp() - 60)], now=NOW)
    assert row.timestamp == NOW - timedelta(seconds=60)


def test_parse_timestamp_always_answers_aware_utc():
    assert parse_timestamp("2026-01-15T12:00:00").tzinfo is not None
    assert parse_timestamp("2026-01-15T12:00:00-05:00") == datetime(2026, 1, 15, 17, tzinfo=UTC)


# --- tags -----------------------------------------------------------------------------


def test_it_rejects_more_than_sixteen_tags():
    tags = {f"k{i}": i for i in range(17)}
    detail = only_detail([point(tags=tags)])
    assert detail["field"] == "tags" and "16" in detail["message"]
    assert validate_points([point(tags={f"k{i}": i for i in range(16)})], now=NOW)


def test_it_rejects_tags_that_are_not_an_object():
    assert only_detail([point(tags=["a"])])["field"] == "tags"


@pytest.mark.parametrize("key", ["", "k" * 65, "9starts-with-digit", "spa ce"])
def test_it_rejects_bad_tag_keys(key):
    detail = only_detail([point(tags={key: "x"})])
    assert detail["index"] == 0 and detail["field"].startswith("tags")


def test_it_rejects_tag_values_that_are_too_long():
    detail = only_detail([point(tags={"endpoint": "x" * 257})])
    assert detail["field"] == "tags.endpoint"
    assert validate_points([point(tags={"endpoint": "x" * 256})], now=NOW)


@pytest.mark.parametrize("value", [{"nested": 1}, [1, 2], "bell\x07", float("nan"), 2**60])
def test_it_rejects_tag_values_that_are_not_plain_scalars(value):
    detail = only_detail([point(tags={"endpoint": value})])
    assert detail["field"] == "tags.endpoint"


@pytest.mark.parametrize(
    "value",
    [
        "invoice\u202egpj.exe",  # right-to-left override
        "a\u2028b",  # line separator
        "a\u2029b",  # paragraph separator
        "a\x85b",  # C1: next line
        "a\x9bb",  # C1: control sequence introducer
        "\u2066isolate\u2069",
        "zero\u200bwidth",
        "\ufeffbom",
    ],
    ids=ascii,
)
def test_it_rejects_tag_values_that_spoof_how_text_displays(value):
    detail = only_detail([point(tags={"endpoint": value})])
    assert detail["field"] == "tags.endpoint" and "not allowed" in detail["message"]


def test_it_accepts_tag_values_in_any_script():
    tags = {"city": "Zürich", "name": "東京", "rtl": "שלום", "emoji": "🚀"}
    assert validate_points([point(tags=tags)], now=NOW)[0].tags == tags


def test_it_accepts_scalar_tag_values():
    tags = {"s": "x", "i": 200, "f": 1.5, "b": True, "n": None}
    assert validate_points([point(tags=tags)], now=NOW)[0].tags == tags


def test_tag_limits_follow_the_settings(telemetry):
    telemetry(MAX_TAGS=2, MAX_TAG_VALUE_LENGTH=3)
    assert only_detail([point(tags={"a": 1, "b": 2, "c": 3})])["field"] == "tags"
    assert only_detail([point(tags={"a": "abcd"})])["field"] == "tags.a"


# --- whole-batch behaviour ---------------------------------------------------------------


def test_it_reports_every_bad_point_with_its_index():
    exc = rejected([point(), point(value=-1), point(), point(service="bad name", metric_type="nope")])
    assert {(d["index"], d["field"]) for d in exc.details} == {(1, "value"), (3, "service"), (3, "metric_type")}
    assert "nothing was stored" in exc.message


def test_it_caps_the_error_list_for_huge_bad_batches():
    exc = rejected([point(value=-1)] * 1000)
    assert 100 <= len(exc.details) < 1000
