"""Dashboard pages and their HTMX fragments, through the Django test client.

Fixtures: `frozen` stops the clock at NOW (time-machine), `ingest` stores
points through the one write path with literal timestamps, `staff` is a
staff user (alert actions always need one).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from metrics.ingest.store import store
from metrics.ingest.validation import validate_points
from metrics.models import Alert
from tests.support.clock import at

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
HX = {"HTTP_HX_REQUEST": "true"}
COMPONENTS = [
    'id="cards"',
    'id="chart-latency"',
    'id="chart-throughput"',
    'id="chart-error-rate"',
    'id="matrix"',
    'id="alerts"',
]


@pytest.fixture
def ingest(frozen):
    def _ingest(*points: tuple[str, str, float, float]) -> None:
        rows = validate_points(
            [
                {"service": s, "metric_type": m, "value": v, "timestamp": at(ago), "tags": {"region": "eu"}}
                for s, m, v, ago in points
            ]
        )
        store(rows)

    return _ingest


@pytest.fixture
def demo(ingest):
    """Two services with all five types in the last minute; api latency breaches critical (opens an alert)."""
    for service, latency in (("api", 1500.0), ("auth", 80.0)):
        ingest(
            (service, "latency", latency, 1),
            (service, "error_rate", 0.01, 1),
            (service, "throughput", 400.0, 1),
            (service, "cpu", 40.0, 1),
            (service, "memory", 50.0, 1),
        )


def html(response) -> str:
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


# --- Overview -------------------------------------------------------------------


def test_the_overview_shows_an_empty_state_and_every_component_without_data(client, frozen):
    page = html(client.get("/"))
    assert "No data yet" in page
    for component in COMPONENTS:
        assert component in page
    assert "No services have reported yet" in page
    assert "No firing alerts" in page


def test_the_overview_shows_cards_matrix_and_alerts_with_data(client, demo):
    page = html(client.get("/"))
    assert "No data yet" not in page
    for component in COMPONENTS:
        assert component in page
    # Throughput adds up across services; the api latency alert makes the latency card critical.
    assert "800 req/s" in page
    assert 'class="card status-critical" data-metric="latency"' in page
    assert 'href="/services/api/?range=1h"' in page
    assert "api latency: 1,500 ms (critical)" in page
    assert "auth latency: 80 ms (healthy)" in page
    assert "api latency 1500 ms above critical threshold 1000 ms" in page


def test_the_overview_is_a_full_page_and_each_fragment_renders_alone_for_htmx(client, demo):
    full = html(client.get("/"))
    assert full.lstrip().startswith("<!doctype html>")
    for target, marker, absent in (
        ("cards", 'id="cards"', 'id="matrix"'),
        ("matrix", 'id="matrix"', 'id="cards"'),
        ("alerts", 'id="alerts"', 'id="matrix"'),
        ("overview-body", 'id="overview-body"', "<html"),
    ):
        fragment = html(client.get("/?range=6h", HTTP_HX_TARGET=target, **HX))
        assert "<html" not in fragment
        assert fragment.lstrip().startswith("<section")
        assert marker in fragment
        assert absent not in fragment


def test_every_fragment_renders_without_data(client, frozen):
    for target in ("cards", "matrix", "alerts", "overview-body"):
        assert f'id="{target}"' in html(client.get("/", HTTP_HX_TARGET=target, **HX))


def test_an_htmx_request_without_a_known_target_gets_the_whole_page(client, frozen):
    assert "<html" in html(client.get("/", HTTP_HX_TARGET="elsewhere", **HX))


def test_the_time_range_changes_the_window_the_cards_average(client, ingest):
    ingest(("api", "latency", 100.0, 30), ("api", "latency", 900.0, 180))
    one_hour = html(client.get("/?range=1h", HTTP_HX_TARGET="cards", **HX))
    six_hours = html(client.get("/?range=6h", HTTP_HX_TARGET="cards", **HX))
    assert "<dt>avg 1h</dt><dd>100 ms</dd>" in one_hour
    assert "<dt>avg 6h</dt><dd>500 ms</dd>" in six_hours


def test_the_previous_window_gives_the_change(client, ingest):
    ingest(("api", "latency", 150.0, 30), ("api", "latency", 100.0, 90))
    assert "+50.0%" in html(client.get("/?range=1h", HTTP_HX_TARGET="cards", **HX))


def test_the_service_filter_limits_cards_matrix_and_alerts(client, demo):
    page = html(client.get("/?services=auth"))
    assert "auth latency: 80 ms (healthy)" in page
    assert "api latency:" not in page
    assert "above critical threshold" not in page
    assert "80 ms" in html(client.get("/?services=auth", HTTP_HX_TARGET="cards", **HX))
    assert 'data-services="auth"' in page
    # Repeated parameters (what the filter form sends) work like the comma-separated form.
    both = html(client.get("/?services=auth&services=api"))
    assert "api latency: 1,500 ms" in both and "auth latency: 80 ms" in both


def test_the_selection_is_carried_into_fragment_and_chart_urls(client, demo):
    page = html(client.get("/?range=24h&services=api"))
    assert 'hx-get="/?range=24h&amp;services=api"' in page
    assert "/dashboard/data/percentiles?metric_type=latency&amp;range=24h&amp;services=api" in page
    assert (
        '<input type="radio" name="range" value="24h"\n      checked>' in page or 'value="24h"\n      checked' in page
    )


def test_a_bad_range_or_service_falls_back_to_the_defaults_on_pages(client, demo):
    page = html(client.get("/?range=3y&services=bad name!"))
    assert 'data-range="1h"' in page
    assert 'data-services=""' in page


def test_the_admin_link_is_shown_to_staff_only(client, frozen, staff):
    assert 'href="/admin/"' not in html(client.get("/"))
    client.force_login(staff)
    assert 'href="/admin/"' in html(client.get("/"))


def test_the_page_loads_only_local_static_files(client, frozen):
    page = html(client.get("/"))
    assert "/static/vendor/htmx.min.js" in page
    assert "/static/vendor/chart.umd.js" in page
    assert "/static/js/dashboard.js" in page
    assert "https://" not in page


@pytest.mark.parametrize("path", ["/", "/services/api/"])
def test_pages_that_also_answer_fragments_vary_on_the_htmx_headers(client, demo, path):
    for response in (client.get(path), client.get(path, HTTP_HX_TARGET="cards", **HX)):
        assert response.status_code == 200
        vary = {v.strip().lower() for v in response["Vary"].split(",")}
        assert {"hx-request", "hx-target"} <= vary


class InlineCode(HTMLParser):
    """Collects what a strict CSP (no 'unsafe-inline') would block: inline scripts, styles and handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script" and not names.get("src"):
            self.found.append("<script> without src")
        if tag == "style":
            self.found.append("<style>")
        self.found += [f"{tag} {name}=" for name in names if name == "style" or name.startswith("on")]
        self.found += [f"{tag} {name}=javascript:" for name, v in attrs if (v or "").startswith("javascript:")]


@pytest.mark.parametrize(
    ("path", "user"), [("/", None), ("/", "staff"), ("/services/api/", "staff"), ("/login/", None)]
)
def test_pages_carry_a_strict_csp_and_nothing_inline_that_it_would_block(client, demo, staff, path, user):
    if user:
        client.force_login(staff)
    response = client.get(path)
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy and "default-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    parser = InlineCode()
    parser.feed(html(response))
    assert parser.found == []
    # htmx would otherwise add its indicator <style> element at load.
    assert '"includeIndicatorStyles": false' in response.content.decode()


# --- Service page ---------------------------------------------------------------


def test_the_service_page_charts_every_metric_type_with_its_tags_and_alerts(client, demo):
    page = html(client.get("/services/api/?range=6h"))
    for metric in ("latency", "error_rate", "throughput", "cpu", "memory"):
        assert f"metric_type={metric}&amp;range=6h&amp;services=api" in page
    assert "<dt>region</dt><dd>eu</dd>" in page
    assert "api latency 1500 ms above critical threshold" in page
    assert 'data-services="api"' in page


def test_the_service_page_fragments_render_alone(client, demo):
    for target in ("cards", "alerts", "service-body"):
        fragment = html(client.get("/services/auth/?range=15m", HTTP_HX_TARGET=target, **HX))
        assert "<html" not in fragment and f'id="{target}"' in fragment
    cards = html(client.get("/services/auth/", HTTP_HX_TARGET="cards", **HX))
    assert "80 ms" in cards and "1,500 ms" not in cards


def test_an_unknown_service_is_404(client, frozen):
    assert client.get("/services/nope/").status_code == 404


def test_the_service_page_renders_for_a_service_without_recent_points(client, ingest):
    ingest(("quiet", "cpu", 10.0, 200))
    page = html(client.get("/services/quiet/?range=15m"))
    # The word "stale" is in every page's legend; the card's own status is what counts.
    assert '<article class="card status-stale" data-metric="cpu">' in page
    assert '<span class="badge status-stale">stale</span>' in page


# --- Alert panel and actions ----------------------------------------------------


def test_firing_alerts_come_first_by_severity_then_resolved_ones(client, ingest, staff):
    ingest(("db", "cpu", 85.0, 3))  # warning
    ingest(("api", "latency", 1500.0, 2))  # critical
    resolved = Alert.objects.create(
        service="cache", metric_type="memory", severity="warning", state="resolved", value=85, latest_value=85,
        threshold=80, message="cache memory was high", started_at=NOW - timedelta(hours=1),
        last_breach_at=NOW - timedelta(hours=1), resolved_at=NOW - timedelta(minutes=50),
    )  # fmt: skip
    client.force_login(staff)
    panel = html(client.get("/", HTTP_HX_TARGET="alerts", **HX))
    critical, warning = panel.index("api latency 1500"), panel.index("db cpu 85")
    assert critical < warning < panel.index("Recently resolved") < panel.index(resolved.message)
    assert panel.count(">Acknowledge<") == 2
    assert "2 firing" in panel


def test_alert_buttons_are_hidden_from_anonymous_users(client, demo):
    panel = html(client.get("/", HTTP_HX_TARGET="alerts", **HX))
    assert "Acknowledge" not in panel
    assert "Log in as staff" in panel


def test_staff_acknowledge_an_alert_over_htmx_and_get_the_panel_back(client, demo, staff):
    alert = Alert.objects.get(service="api")
    client.force_login(staff)
    response = client.post(f"/alerts/{alert.pk}/acknowledge?range=1h", {"page": "/"}, HTTP_HX_TARGET="alerts", **HX)
    panel = html(response)
    alert.refresh_from_db()
    assert alert.acknowledged_by == "oncall" and alert.acknowledged_at is not None
    assert panel.lstrip().startswith('<section id="alerts"')
    assert "acknowledged by oncall" in panel
    assert 'hx-get="/?range=1h"' in panel


def test_staff_resolve_an_alert_and_it_moves_below(client, demo, staff):
    alert = Alert.objects.get(service="api")
    client.force_login(staff)
    panel = html(client.post(f"/alerts/{alert.pk}/resolve", {"page": "/services/api/"}, **HX))
    alert.refresh_from_db()
    assert alert.state == Alert.RESOLVED
    assert "No firing alerts" in panel and "Recently resolved" in panel
    assert 'hx-get="/services/api/?range=1h"' in panel


def test_an_action_without_htmx_redirects_back_to_the_page(client, demo, staff):
    alert = Alert.objects.get(service="api")
    client.force_login(staff)
    response = client.post(f"/alerts/{alert.pk}/acknowledge?range=6h", {"page": "https://evil.example/"})
    assert response.status_code == 302
    assert response["Location"] == "/?range=6h"


def test_alert_actions_need_staff(client, demo):
    alert = Alert.objects.get(service="api")
    assert client.post(f"/alerts/{alert.pk}/resolve").status_code == 302  # to the login page
    client.force_login(get_user_model().objects.create_user("viewer", password="pw"))
    assert client.post(f"/alerts/{alert.pk}/resolve").status_code == 403
    alert.refresh_from_db()
    assert alert.state == Alert.FIRING


def test_alert_actions_are_csrf_protected(demo, staff):
    alert = Alert.objects.get(service="api")
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    assert client.post(f"/alerts/{alert.pk}/acknowledge", **HX).status_code == 403
    alert.refresh_from_db()
    assert not alert.acknowledged_by and alert.acknowledged_at is None
    page = html(client.get("/"))
    token = page.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    assert client.post(f"/alerts/{alert.pk}/acknowledge", {"csrfmiddlewaretoken": token}, **HX).status_code == 200
    alert.refresh_from_db()
    assert alert.acknowledged_by == staff.username and alert.acknowledged_at is not None


def test_alert_actions_answer_404_for_an_unknown_alert_and_405_for_get(client, frozen, staff):
    client.force_login(staff)
    assert client.post("/alerts/999/acknowledge").status_code == 404
    assert client.get("/alerts/999/acknowledge").status_code == 405


def test_pages_redirect_to_login_when_login_is_required(client, frozen, telemetry):
    telemetry(DASHBOARD_REQUIRE_LOGIN=True)
    assert client.get("/").status_code == 302
    assert client.get("/", HTTP_HX_TARGET="cards", **HX).status_code == 302
