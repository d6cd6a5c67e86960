"""Each ingest limit at its edge: the limit itself passes, one more is refused and stores nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from metrics.models import Point, Series, Service

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]

# The points carry literal timestamps; the clock stands just after them so they
# stay inside the raw retention whatever day the suite runs.
NOW = datetime(2026, 11, 28, 0, 5, tzinfo=UTC)

TS = "2026-11-28T00:00:00Z"


def point(service="api", metric_type="latency", value=10.0, **tags):
    p = {"timestamp": TS, "service": service, "metric_type": metric_type, "value": value}
    if tags:
        p["tags"] = tags
    return p


@pytest.fixture
def ingest(client, telemetry):
    telemetry(REQUIRE_API_KEY=False)

    def post(body, raw: bytes | None = None):
        data = raw if raw is not None else orjson.dumps(body)
        return client.post("/metrics/ingest", data, content_type="application/json")

    return post


def test_a_body_at_the_size_limit_is_accepted_and_one_byte_more_is_413(ingest, telemetry):
    limit = 2048
    telemetry(REQUIRE_API_KEY=False, INGEST_MAX_BODY_BYTES=limit)
    body = orjson.dumps(point())
    at_limit = body + b" " * (limit - len(body))
    assert len(at_limit) == limit
    assert ingest(None, raw=at_limit).status_code == 200
    response = ingest(None, raw=at_limit + b" ")
    assert response.status_code == 413
    assert response.json()["details"][0]["field"] == "body"
    assert Point.objects.count() == 1


def test_a_batch_at_the_point_limit_is_accepted_and_one_more_is_413(ingest, telemetry):
    telemetry(REQUIRE_API_KEY=False, INGEST_MAX_POINTS=3)
    assert ingest([point()] * 3).json()["accepted"] == 3
    response = ingest({"metrics": [point()] * 4})
    assert response.status_code == 413
    assert "at most 3 points" in response.json()["details"][0]["message"]
    assert Point.objects.count() == 3


def test_tags_per_point_at_the_limit_pass_and_one_more_is_400(ingest, telemetry):
    telemetry(REQUIRE_API_KEY=False, MAX_TAGS=2)
    assert ingest(point(a="1", b="2")).status_code == 200
    response = ingest([point(), point(a="1", b="2", c="3")])
    assert response.status_code == 400
    assert response.json()["details"][0] == {"index": 1, "field": "tags", "message": "at most 2 tags, got 3"}
    assert Point.objects.count() == 1


def test_tag_key_length_at_the_limit_passes_and_one_more_is_400(ingest, telemetry):
    telemetry(REQUIRE_API_KEY=False, MAX_TAG_KEY_LENGTH=8)
    assert ingest(point(**{"k" * 8: "v"})).status_code == 200
    response = ingest(point(**{"k" * 9: "v"}))
    assert response.status_code == 400
    assert response.json()["details"][0]["field"] == "tags." + "k" * 9


def test_tag_value_length_at_the_limit_passes_and_one_more_is_400(ingest, telemetry):
    telemetry(REQUIRE_API_KEY=False, MAX_TAG_VALUE_LENGTH=16)
    assert ingest(point(endpoint="v" * 16)).status_code == 200
    response = ingest(point(endpoint="v" * 17))
    assert response.status_code == 400
    assert response.json()["details"][0] == {
        "index": 0,
        "field": "tags.endpoint",
        "message": "longer than 16 characters",
    }


def test_the_series_cap_refuses_a_new_tag_combination_with_429(ingest, telemetry):
    telemetry(REQUIRE_API_KEY=False, MAX_SERIES_PER_SERVICE=3)
    assert ingest([point(endpoint=f"/e{i}") for i in range(3)]).status_code == 200
    response = ingest([point(endpoint="/e0"), point(endpoint="/e3")])
    assert response.status_code == 429
    body = response.json()
    assert "Series limit reached for service 'api'" in body["error"]
    assert "the cap is 3" in body["error"]
    assert body["details"][0]["field"] == "tags"
    assert Point.objects.count() == 3, "a refused request stores nothing"
    assert Series.objects.filter(service="api").count() == 3


def test_known_series_keep_flowing_at_the_series_cap(ingest, telemetry):
    telemetry(REQUIRE_API_KEY=False, MAX_SERIES_PER_SERVICE=2)
    assert ingest([point(endpoint="/a"), point(endpoint="/b")]).status_code == 200
    assert ingest([point(endpoint="/b", value=20), point(endpoint="/a", value=30)]).status_code == 200
    assert ingest(point(metric_type="cpu", endpoint="/a")).status_code == 429
    assert ingest(point(service="other", endpoint="/c")).status_code == 200, "the cap is per service"


def test_the_series_cap_counts_series_stored_by_other_instances(ingest, telemetry):
    """The count comes from the Series table, not from this process's memory."""
    telemetry(REQUIRE_API_KEY=False, MAX_SERIES_PER_SERVICE=2)
    assert ingest([point(endpoint="/a"), point(endpoint="/b")]).status_code == 200
    import metrics.ingest.store as ingest_module

    ingest_module.known.clear()  # a fresh process: nothing cached
    assert ingest(point(endpoint="/c")).status_code == 429
    assert ingest(point(endpoint="/a")).status_code == 200


def test_the_service_cap_refuses_a_new_service_with_429(ingest, telemetry):
    telemetry(REQUIRE_API_KEY=False, MAX_SERVICES=2)
    assert ingest([point(service="a"), point(service="b")]).status_code == 200
    response = ingest([point(service="a"), point(service="c")])
    assert response.status_code == 429
    assert "Service limit reached" in response.json()["error"]
    assert "the cap is 2" in response.json()["error"]
    assert sorted(Service.objects.values_list("name", flat=True)) == ["a", "b"]
    assert Point.objects.count() == 2
    assert ingest(point(service="b", value=11)).status_code == 200
