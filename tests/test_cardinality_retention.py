"""The cardinality caps free up: retention deletes Series and Service rows with no data left, staff can
delete them in the admin, and the 429 says how.

Points arrive through the HTTP API at literal timestamps; time-machine moves the
clock past the retention periods (24 h raw, 7 d rollups by default) before
`manage.py prune` runs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import orjson
import pytest
from django.core.management import call_command

import metrics.ingest.store as ingest_module
from metrics.maintenance import retention
from metrics.models import Point, Rollup, Series, Service
from tests.support.clock import iso

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
def ingest(client, telemetry, frozen, django_capture_on_commit_callbacks):
    telemetry(REQUIRE_API_KEY=False)

    def post(service: str = "api", metric_type: str = "latency", value: float = 10.0, at=None, **tags):
        at = at or clock_now()
        point = {"service": service, "metric_type": metric_type, "value": value, "timestamp": iso(at)}
        if tags:
            point["tags"] = tags
        # The test's transaction never commits: run the after-commit work (the
        # ingest cache) as a committed request would.
        with django_capture_on_commit_callbacks(execute=True):
            return client.post("/metrics/ingest", orjson.dumps(point), content_type="application/json")

    return post


def clock_now() -> datetime:
    return datetime.now(UTC)


def prune_at(frozen, when: datetime) -> str:
    frozen.move_to(when)
    out = StringIO()
    call_command("prune", stdout=out)
    return out.getvalue()


def test_junk_services_at_the_cap_leave_after_retention_and_a_new_service_is_accepted(ingest, frozen, telemetry):
    telemetry(REQUIRE_API_KEY=False, MAX_SERVICES=5)
    for i in range(5):
        assert ingest(service=f"junk{i}").status_code == 200
    refused = ingest(service="legit")
    assert refused.status_code == 429
    text = prune_at(frozen, NOW + timedelta(days=8))
    assert "5 series and 5 services with no data left" in text
    assert not Service.objects.exists() and not Series.objects.exists()
    assert not Point.objects.exists() and not Rollup.objects.exists()
    assert ingest(service="legit").status_code == 200
    assert list(Service.objects.values_list("name", flat=True)) == ["legit"]


def test_retention_keeps_series_and_services_while_their_rollups_last(ingest, frozen):
    assert ingest(service="api").status_code == 200
    prune_at(frozen, NOW + timedelta(days=2))  # raw points gone, the rollup stays
    assert not Point.objects.exists() and Rollup.objects.exists()
    assert Series.objects.count() == 1 and Service.objects.count() == 1


def test_a_tag_set_that_stopped_goes_while_its_service_keeps_reporting(ingest, frozen):
    assert ingest(endpoint="/old").status_code == 200
    frozen.move_to(NOW + timedelta(days=8))
    assert ingest(endpoint="/new").status_code == 200
    prune_at(frozen, NOW + timedelta(days=8, minutes=1))
    assert list(Series.objects.values_list("tags", flat=True)) == [{"endpoint": "/new"}]
    assert Service.objects.count() == 1


def test_a_series_is_kept_until_a_margin_past_the_raw_retention_of_its_last_point(ingest, frozen, telemetry):
    # The margin outlasts the minute any process trusts a row it wrote, so a
    # series that process still skips writing is never deleted under it.
    telemetry(REQUIRE_API_KEY=False, RAW_RETENTION_HOURS=1)
    assert ingest(at=NOW - timedelta(minutes=59)).status_code == 200  # at the raw retention's edge
    Point.objects.all().delete()  # its data gone (the admin, say)
    for minutes in (2, 5):
        prune_at(frozen, NOW + timedelta(minutes=minutes))
        assert Series.objects.count() == 1, minutes
    prune_at(frozen, NOW + timedelta(minutes=7))
    assert Series.objects.count() == 0


def test_a_series_deleted_by_another_process_is_written_again_once_trust_expires(ingest, frozen):
    """Retention in `manage.py prune` cannot clear the server's cache: the server stops trusting it by itself."""
    assert ingest(endpoint="/a").status_code == 200
    remembered = dict(ingest_module.known.series), dict(ingest_module.known.services)
    prune_at(frozen, NOW + timedelta(days=8))
    assert not Series.objects.exists()
    # The server process still remembers the series it wrote 8 days ago.
    ingest_module.known.series.update(remembered[0])
    ingest_module.known.services.update(remembered[1])
    assert ingest(endpoint="/a").status_code == 200
    (series,) = Series.objects.all()
    assert series.tags == {"endpoint": "/a"} and series.last_seen == NOW + timedelta(days=8)
    assert Service.objects.filter(name="api").exists()


def test_a_series_deleted_in_the_admin_is_back_within_a_minute_of_its_next_point(ingest, frozen):
    assert ingest(endpoint="/a").status_code == 200
    Series.objects.all().delete()  # as another process would: this one's cache is untouched
    frozen.move_to(NOW + timedelta(seconds=61))
    assert ingest(endpoint="/a").status_code == 200
    assert Series.objects.count() == 1


def test_last_seen_follows_the_points_at_most_once_a_minute(ingest, frozen):
    assert ingest().status_code == 200
    for seconds in (10, 30, 59):
        frozen.move_to(NOW + timedelta(seconds=seconds))
        assert ingest().status_code == 200
    assert Series.objects.get().last_seen == NOW
    frozen.move_to(NOW + timedelta(seconds=75))
    assert ingest().status_code == 200
    series = Series.objects.get()
    assert (series.first_seen, series.last_seen) == (NOW, NOW + timedelta(seconds=75))


def test_the_service_429_says_how_to_free_room(ingest, telemetry):
    telemetry(REQUIRE_API_KEY=False, MAX_SERVICES=1)
    assert ingest(service="a").status_code == 200
    body = ingest(service="b").json()
    assert "/admin/metrics/series/" in body["error"] and "/admin/metrics/service/" in body["error"]
    assert "RAW_RETENTION_HOURS" in body["error"] and "ROLLUP_RETENTION_DAYS" in body["error"]


def test_the_series_429_says_how_to_free_room(ingest, telemetry):
    telemetry(REQUIRE_API_KEY=False, MAX_SERIES_PER_SERVICE=1)
    assert ingest(endpoint="/a").status_code == 200
    body = ingest(endpoint="/b").json()
    assert "/admin/metrics/series/" in body["error"] and "retention" in body["error"]


def test_the_dry_run_predicts_the_series_and_services_a_real_run_deletes(ingest, frozen):
    assert ingest(service="gone").status_code == 200
    frozen.move_to(NOW + timedelta(days=8))
    assert ingest(service="stays").status_code == 200
    dry = retention.prune(dry_run=True)
    assert (dry.series_deleted, dry.services_deleted) == (1, 1)
    assert Series.objects.count() == 2
    real = retention.prune()
    assert (real.series_deleted, real.services_deleted) == (1, 1)
    assert list(Service.objects.values_list("name", flat=True)) == ["stays"]


# --- admin -------------------------------------------------------------------------------


def test_staff_see_each_series_with_its_tags_and_last_seen(ingest, admin_client):
    assert ingest(endpoint="/users").status_code == 200
    Series.objects.create(service="old", metric_type="cpu", tags_hash="x" * 40, first_seen=NOW, last_seen=NOW)
    page = admin_client.get("/admin/metrics/series/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "/users" in html and "api" in html and "latency" in html
    assert "not known" in html  # a series first seen before tags were stored


def test_staff_delete_series_in_the_admin_and_the_cap_has_room_at_once(ingest, admin_client, telemetry):
    telemetry(REQUIRE_API_KEY=False, MAX_SERIES_PER_SERVICE=1)
    assert ingest(endpoint="/junk").status_code == 200
    assert ingest(endpoint="/real").status_code == 429
    ids = [str(pk) for pk in Series.objects.values_list("pk", flat=True)]
    response = admin_client.post(
        "/admin/metrics/series/", {"action": "delete_selected", "_selected_action": ids, "post": "yes"}
    )
    assert response.status_code == 302
    assert not Series.objects.exists()
    assert ingest(endpoint="/real").status_code == 200


def test_deleting_a_service_in_the_admin_takes_its_series_and_frees_a_service_slot(ingest, admin_client, telemetry):
    telemetry(REQUIRE_API_KEY=False, MAX_SERVICES=1)
    assert ingest(service="junk").status_code == 200
    assert ingest(service="real").status_code == 429
    junk = Service.objects.get(name="junk")
    response = admin_client.post(f"/admin/metrics/service/{junk.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Series.objects.filter(service="junk").exists()
    assert ingest(service="real").status_code == 200


def test_series_cannot_be_added_or_edited_in_the_admin(admin_client, frozen):
    series = Series.objects.create(service="a", metric_type="cpu", tags_hash="", tags={}, first_seen=NOW, last_seen=NOW)
    assert admin_client.get("/admin/metrics/series/add/").status_code == 403
    response = admin_client.post(f"/admin/metrics/series/{series.pk}/change/", {"service": "b"})
    assert response.status_code == 403
    assert Series.objects.get().service == "a"
