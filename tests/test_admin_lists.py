"""The admin's point and rollup lists stay cheap on big tables (metrics.admin_paging).

Fixtures: `admin_client` is pytest-django's logged-in superuser. Points are a
few per series at literal times; the page bound is shrunk (`small_pages`) so
"past the bound" needs a dozen rows, not a hundred thousand.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from metrics.admin import PointAdmin, RollupAdmin
from metrics.admin_paging import BoundedCountPaginator
from metrics.models import Point, Rollup, Service

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
POINTS = "/admin/metrics/point/"
ROLLUPS = "/admin/metrics/rollup/"


@pytest.fixture
def points():
    """Two services x two types; one point a minute for the last 3 minutes, plus one 30 h ago."""
    rows = []
    for service in ("api", "auth"):
        Service.objects.create(name=service, first_seen=NOW - timedelta(days=2), last_seen=NOW)
        for metric_type in ("latency", "cpu"):
            rows.append(Point(timestamp=NOW - timedelta(hours=30), service=service, metric_type=metric_type, value=1))
            rows += [
                Point(timestamp=NOW - timedelta(minutes=m), service=service, metric_type=metric_type, value=float(m))
                for m in range(3)
            ]
    Point.objects.bulk_create(rows)
    return rows


@pytest.fixture
def small_pages(monkeypatch):
    monkeypatch.setattr(PointAdmin, "list_per_page", 2)
    monkeypatch.setattr(BoundedCountPaginator, "max_pages", 3)


def list_queries(client, url):
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return response, [q["sql"] for q in ctx.captured_queries]


def counts(sqls):
    return [s for s in sqls if "COUNT(" in s.upper()]


def shown_values(response):
    return [str(p.value) for p in response.context["cl"].result_list]


@time_machine.travel(NOW, tick=False)
def test_point_list_counts_at_most_its_page_bound_never_the_whole_table(admin_client, points):
    response, sqls = list_queries(admin_client, POINTS)

    assert counts(sqls), "a small table is counted exactly"
    assert all(re.search(r"LIMIT \d+", s) for s in counts(sqls)), counts(sqls)
    # date_hierarchy's DISTINCT-by-day and the filter's DISTINCT service are gone.
    assert not [s for s in sqls if "DISTINCT" in s.upper() and "metrics_point" in s]
    assert response.context["cl"].result_count == len(points)


@time_machine.travel(NOW, tick=False)
def test_unfiltered_list_past_the_bound_estimates_instead_of_counting(admin_client, points, small_pages):
    response, sqls = list_queries(admin_client, POINTS)

    assert counts(sqls) == []
    assert response.context["cl"].result_count == 6  # 3 pages of 2
    assert f"About {len(points)} points match" in response.content.decode()


@time_machine.travel(NOW, tick=False)
def test_a_page_past_the_bound_shows_the_last_page_with_a_message(admin_client, points, small_pages):
    response, _ = list_queries(admin_client, POINTS + "?p=40")

    assert response.context["cl"].page_num == 3
    assert len(response.context["cl"].result_list) == 2
    assert "you asked for a page past the last one" in response.content.decode()


@time_machine.travel(NOW, tick=False)
def test_filtered_list_past_the_bound_says_more_than(admin_client, points, small_pages):
    response, sqls = list_queries(admin_client, POINTS + "?service=api")

    assert all("LIMIT 7" in s for s in counts(sqls))
    assert "More than 6 points match" in response.content.decode()


@time_machine.travel(NOW, tick=False)
def test_list_is_newest_first(admin_client, points):
    response, _ = list_queries(admin_client, POINTS)

    stamps = [p.timestamp for p in response.context["cl"].result_list]
    assert stamps == sorted(stamps, reverse=True)
    assert stamps[0] == NOW


@time_machine.travel(NOW, tick=False)
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("service=api", {("api", "latency"): 4, ("api", "cpu"): 4}),
        ("metric_type__exact=cpu", {("api", "cpu"): 4, ("auth", "cpu"): 4}),
        ("service=auth&metric_type__exact=latency", {("auth", "latency"): 4}),
        ("time=1h&service=api", {("api", "latency"): 3, ("api", "cpu"): 3}),
        ("time=2026-03-01", {(s, m): 1 for s in ("api", "auth") for m in ("latency", "cpu")}),
        ("time=2026-03-02", {(s, m): 3 for s in ("api", "auth") for m in ("latency", "cpu")}),
    ],
)
def test_filters_narrow_the_point_list(admin_client, points, query, expected):
    response, _ = list_queries(admin_client, f"{POINTS}?{query}")

    seen: dict[tuple[str, str], int] = {}
    for p in response.context["cl"].result_list:
        seen[(p.service, p.metric_type)] = seen.get((p.service, p.metric_type), 0) + 1
    assert seen == expected


@time_machine.travel(NOW, tick=False)
def test_time_filter_offers_recent_ranges_and_each_day_with_data(admin_client, points):
    response, _ = list_queries(admin_client, POINTS)

    body = response.content.decode()
    for value in ("15m", "1h", "24h", "2026-03-02", "2026-03-01"):
        assert f"?time={value}" in body
    assert "?time=2026-02-28" not in body


@time_machine.travel(NOW, tick=False)
def test_list_sorts_only_by_the_indexed_time_column(admin_client, points):
    response, _ = list_queries(admin_client, POINTS)

    assert set(response.context["cl"].sortable_by) == {"timestamp"}


@time_machine.travel(NOW, tick=False)
def test_rollup_list_counts_within_its_bound_and_never_reads_sketches(admin_client):
    Service.objects.create(name="api", first_seen=NOW, last_seen=NOW)
    Rollup.objects.bulk_create(
        Rollup(service="api", metric_type="cpu", minute=NOW - timedelta(minutes=m), count=1, sum=1, min=1, max=1)
        for m in range(5)
    )

    response, sqls = list_queries(admin_client, ROLLUPS + "?service=api")

    assert all(re.search(r"LIMIT \d+", s) for s in counts(sqls)), counts(sqls)
    assert not [s for s in sqls if "metrics_rollup" in s and "sketch" in s]
    assert not [s for s in sqls if "DISTINCT" in s.upper() and "metrics_rollup" in s]
    assert response.context["cl"].result_count == 5
    assert set(RollupAdmin.sortable_by) == {"minute"}


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's plan without statistics, as deployed")
@pytest.mark.parametrize(
    ("sql", "index"),
    [
        (
            "SELECT * FROM metrics_point WHERE service = 'api' ORDER BY timestamp DESC, id DESC LIMIT 100",
            "point_service_ts_idx",
        ),
        (
            "SELECT * FROM metrics_rollup WHERE service = 'api' ORDER BY minute DESC, id DESC LIMIT 100",
            "rollup_service_minute_idx",
        ),
    ],
)
def test_service_filtered_lists_read_an_index_in_order_without_sorting(sql, index):
    with connection.cursor() as cur:
        cur.execute("EXPLAIN QUERY PLAN " + sql)
        plan = " ".join(str(row[-1]) for row in cur.fetchall())

    assert index in plan
    assert "TEMP B-TREE" not in plan
