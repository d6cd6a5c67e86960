"""manage.py generate_metrics and the DemoSource behind it."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from io import StringIO

import httpx
import pytest
import time_machine
from django.core.management import CommandError, call_command

from metrics.demo import DEMO_SERVICES, DemoSource
from metrics.ingest.store import store
from metrics.ingest.validation import validate_points
from metrics.kinds import METRIC_TYPES
from metrics.models import Alert, Point, Rollup, RollupState, Service
from tests.live import LiveServer

pytestmark = pytest.mark.django_db


def run(**options) -> str:
    out, err = StringIO(), StringIO()
    call_command("generate_metrics", stdout=out, stderr=err, **options)
    return out.getvalue()


def test_it_streams_every_metric_type_for_the_chosen_services():
    output = run(duration=0.3, rate=10, services="alpha,beta", seed=1)
    assert set(Point.objects.values_list("service", flat=True)) == {"alpha", "beta"}
    assert set(Point.objects.values_list("metric_type", flat=True)) == set(METRIC_TYPES)
    assert sorted(Service.objects.values_list("name", flat=True)) == ["alpha", "beta"]
    assert f"sent {Point.objects.count()} points for 2 services" in output


def test_the_default_is_the_five_demo_services():
    run(duration=0.1, rate=5, seed=2)
    assert set(Service.objects.values_list("name", flat=True)) == set(DEMO_SERVICES)


def test_backfill_writes_history_and_rolls_it_up():
    run(backfill=0.1, duration=0.1, rate=5, services="api", seed=3)
    stamps = sorted(Point.objects.values_list("timestamp", flat=True))
    assert stamps[-1] - stamps[0] >= timedelta(minutes=4)
    # Samples every 10 s, five metric types each.
    assert Point.objects.filter(timestamp__lt=stamps[0] + timedelta(minutes=1)).count() >= 25
    assert RollupState.get().rolled_through is not None
    assert Rollup.objects.filter(service="api").count() >= 4 * 5


def test_backfill_beyond_the_raw_retention_is_kept_as_rollups(telemetry):
    telemetry(RAW_RETENTION_HOURS=1)
    output = run(backfill=1.5, duration=0.1, rate=5, services="api", seed=4)
    now = datetime.now(UTC)
    assert not Point.objects.filter(timestamp__lt=now - timedelta(hours=1, minutes=1)).exists()
    old = Rollup.objects.filter(minute__lt=now - timedelta(hours=1, minutes=2))
    assert old.count() >= 25 * 5
    counts = list(old.filter(metric_type="latency").order_by("minute").values_list("count", flat=True))
    assert set(counts) == {1}  # history past the raw retention: one sample a minute
    # First seen is the first sample's time, though only a rollup holds it now.
    assert Service.objects.get(name="api").first_seen == Rollup.objects.earliest("minute").minute
    recent = Rollup.objects.filter(metric_type="latency", minute__gte=now - timedelta(minutes=50))
    assert set(recent.exclude(minute__gte=now - timedelta(minutes=2)).values_list("count", flat=True)) == {6}
    assert "rolled up as history" in output


@time_machine.travel(datetime(2026, 3, 9, 12, 0, 30, tzinfo=UTC), tick=False)
def test_a_week_of_history_fills_every_range_and_first_seen_goes_back_a_week(client):
    output = run(backfill=168, step=60, no_stream=True, services="api", seed=8)
    now = datetime(2026, 3, 9, 12, 0, 30, tzinfo=UTC)
    week_ago = now - timedelta(days=7)
    # Raw points for the retention's 24 h, rollups for every minute of the week.
    assert Point.objects.earliest("timestamp").timestamp == datetime(2026, 3, 8, 12, 0, tzinfo=UTC)
    # (The week's first minute would be past the rollup retention: it starts at the next.)
    first_minute = week_ago.replace(second=0) + timedelta(minutes=1)
    assert Rollup.objects.earliest("minute").minute == first_minute
    assert Rollup.objects.filter(metric_type="cpu").count() == 7 * 24 * 60 - 1  # the current minute is not over
    # First seen is the first point's time, though only rollups hold it now.
    assert Service.objects.get(name="api").first_seen == first_minute
    assert "First seen 2026-03-02 12:01 UTC" in client.get("/services/api/").content.decode()
    # Alerts of the week, each at its own points' times.
    alerts = list(Alert.objects.all())
    assert alerts and all(a.state == "resolved" for a in alerts)
    assert min(a.started_at for a in alerts) < now - timedelta(days=2)
    assert all(a.last_breach_at < a.resolved_at <= a.last_breach_at + timedelta(minutes=5) for a in alerts)
    assert "for more or denser history" in output and "--backfill HOURS" in output
    assert "generate_metrics: sent" in output


def test_backfill_if_empty_fills_a_first_start_only():
    run(backfill=0.05, no_stream=True, if_empty=True, services="api", seed=9)
    stored = Point.objects.count()
    assert stored > 0
    output = run(backfill=0.05, no_stream=True, if_empty=True, services="api", seed=9)
    assert "skipped" in output and Point.objects.count() == stored


@pytest.mark.parametrize("step", [0, 7, 90])
def test_it_refuses_a_step_that_does_not_fit_minutes(step):
    with pytest.raises(CommandError, match="--step"):
        run(backfill=1, step=step, no_stream=True)
    assert Point.objects.count() == 0


def test_it_refuses_bad_options():
    with pytest.raises(CommandError):
        run(duration=0.1, services="bad name")
    with pytest.raises(CommandError):
        run(duration=0.1, services=",")
    with pytest.raises(CommandError):
        run(duration=0.1, rate=0)
    assert Point.objects.count() == 0


def test_incidents_open_alerts_that_later_resolve(telemetry):
    """A seeded DemoSource driven through the ingestion path over 40 simulated minutes."""
    telemetry(ALERT_RESOLVE_POINTS=3, ALERT_RESOLVE_SECONDS=30)
    # cache and queue: low latency, so random spikes never cross a threshold and
    # every alert below comes from an incident.
    source = DemoSource(services=("cache", "queue"), incident_probability=1 / 600, rng=random.Random(11))
    start = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)
    incidents: set[tuple[str, float]] = set()
    for batch in range(40 * 6):  # 10-second batches of one sample per second
        points = []
        for second in range(10):
            points.extend(source.points_at(start + timedelta(seconds=batch * 10 + second)))
            incidents.update((svc, inc.until) for svc, inc in source.incidents.items())
        store(validate_points(points, now=start + timedelta(seconds=batch * 10 + 10)))
    assert len(incidents) >= 2, "the seed should produce incidents"
    resolved = Alert.objects.filter(state="resolved")
    assert resolved.exists(), "no incident opened and resolved an alert"
    assert all(a.resolved_at >= a.last_breach_at + timedelta(seconds=30) for a in resolved)
    # Every incident opened alerts on its service...
    for service, until in incidents:
        ended = start.fromtimestamp(until, UTC)
        assert Alert.objects.filter(
            service=service, started_at__lte=ended, last_breach_at__gte=ended - timedelta(minutes=5)
        ).exists()
    # ...and alerts are per series per incident, not a log of bad points.
    assert Alert.objects.count() <= 5 * len(incidents)
    assert max(a.breach_count for a in Alert.objects.all()) >= 30


def test_without_incidents_the_demo_stays_healthy():
    source = DemoSource(incident_probability=0, rng=random.Random(5))
    start = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)  # the busiest hour of the daily cycle
    points = [p for s in range(120) for p in source.points_at(start + timedelta(seconds=s))]
    store(validate_points(points, now=start + timedelta(minutes=2)))
    assert Alert.objects.filter(metric_type__in=["error_rate", "throughput", "memory"]).count() == 0


def test_the_demo_follows_a_daily_cycle():
    source = DemoSource(services=("api",), incident_probability=0, rng=random.Random(6))

    def mean_throughput(hour: int) -> float:
        at = datetime(2026, 3, 2, hour, tzinfo=UTC)
        values = [
            p["value"]
            for s in range(60)
            for p in source.points_at(at + timedelta(seconds=s))
            if p["metric_type"] == "throughput"
        ]
        return sum(values) / len(values)

    assert mean_throughput(16) > 2 * mean_throughput(4)


@pytest.mark.live
def test_it_posts_to_a_remote_instance_with_url(tmp_path):
    # The generator's HTTP path is under test, not the database: the server gets its own SQLite file.
    with LiveServer(tmp_path, DATABASE_URL="", REDIS_URL="", REQUIRE_API_KEY="0") as server:
        output = run(url=server.url, duration=1, rate=5, services="remote", seed=7)
        body = httpx.get(server.url + "/metrics/query", params={"services": "remote"}, timeout=20).json()
        # Every point the generator reports as sent (acknowledged) is stored on the server, no fewer.
        sent = int(re.search(r"sent (\d+) points", output)[1])  # type: ignore[index]
        assert sent >= 5 and len(body["data"]) == sent, output
        assert {p["service"] for p in body["data"]} == {"remote"}
    assert Point.objects.count() == 0  # nothing was written in process
