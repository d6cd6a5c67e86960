"""metrics.ingest.validation checks each distinct service, tag key and tag value once per request.

A batch repeats a few strings a thousand times, so the validator remembers, for
one call only, the strings that already passed a rule. These tests pin that a
repeat gets exactly the verdict its first occurrence got, and that nothing
remembered outlives the request.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from metrics.errors import ValidationErrors
from metrics.ingest.validation import validate_points

NOW = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)


def point(service: str = "api", **tags: object) -> dict:
    return {"service": service, "metric_type": "latency", "value": 10.0, "tags": tags}


def failures(points: list) -> list[tuple[int, str]]:
    with pytest.raises(ValidationErrors) as info:
        validate_points(points, now=NOW)
    return [(d["index"], d["field"]) for d in info.value.details]


def test_a_bad_tag_value_is_reported_at_every_point_that_repeats_it():
    spoofed = "gpj\u202eexe"
    assert failures([point(file=spoofed), point(file="ok"), point(file=spoofed)]) == [
        (0, "tags.file"),
        (2, "tags.file"),
    ]


def test_a_value_that_passed_under_a_good_key_is_refused_under_a_bad_one():
    assert failures([point(region="eu"), point(**{"1region": "eu"})]) == [(1, "tags.1region")]


def test_a_key_that_passed_with_a_good_value_is_refused_with_a_bad_one():
    assert failures([point(region="eu"), point(region="eu\x00"), point(region=["eu"])]) == [
        (1, "tags.region"),
        (2, "tags.region"),
    ]


def test_a_service_seen_earlier_in_the_batch_does_not_excuse_a_different_one():
    assert failures([point("api"), point("api"), point("api v2"), point("api")]) == [(2, "service")]


def test_a_limit_lowered_between_requests_applies_to_strings_the_last_request_accepted(telemetry):
    long_value = "x" * 20
    assert len(validate_points([point(host=long_value)] * 3, now=NOW)) == 3
    telemetry(MAX_TAG_VALUE_LENGTH=10)
    assert failures([point(host=long_value)]) == [(0, "tags.host")]


def test_too_many_tags_is_refused_even_when_every_tag_was_seen_before(telemetry):
    telemetry(MAX_TAGS=2)
    assert failures([point(a="1", b="2"), point(a="1", b="2", c="3")]) == [(1, "tags")]
