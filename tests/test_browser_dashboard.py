"""The dashboard in real headless Chromium (Debian's, driven by Playwright) against a real daphne.

One server and one browser for the module; each test uses its own services
so the tests do not depend on each other's data. Screenshots go to
test-artifacts/ (gitignored).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.live import ROOT, LiveServer, create_superuser
from tests.services import require_service
from tests.support.clock import iso
from tests.support.servers import own_server

pytestmark = [pytest.mark.live, pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts"
SEED_SERVICES = ("api", "auth", "database")
STAFF = ("oncall", "browser-test-pw")
VIEWER = ("viewer", "browser-viewer-pw")
# Every page reports Content-Security-Policy violations as console errors, which
# each test asserts away (Chromium logs most of them too; this catches them all).
REPORT_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  const what = e.violatedDirective + " blocked " + (e.blockedURI || "inline code");
  const where = e.sourceFile ? " at " + e.sourceFile + ":" + e.lineNumber + ":" + e.columnNumber : "";
  window.__cspViolations.push(what + where);
  console.error("CSP violation: " + what + where);
});
"""
# How long to wait for something the page must do. Generous on purpose: on a
# busy machine a slow browser is not a broken dashboard. How fast a point
# reaches a client is a figure of `make bench` (4a, ingest -> frame), not a test.
WAIT_MS = 30_000

require_service(
    "Chromium",
    Path(CHROMIUM).exists() or shutil.which("chromium") is not None,
    "apt-get install chromium (.ci/run installs it)",
    allow_module_level=True,
)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
if not (ROOT / "static" / "vendor" / "chart.umd.js").exists():
    pytest.skip(
        "front-end assets are not installed (make install: npm ci + scripts/vendor_assets.py)", allow_module_level=True
    )


def point(service: str, metric_type: str, value: float, when: datetime | None = None) -> dict:
    return {"service": service, "metric_type": metric_type, "value": value, "timestamp": iso(when or datetime.now(UTC))}


def post(server: LiveServer, points: list[dict]) -> dict:
    response = httpx.post(server.url + "/metrics/ingest", json=points, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    overrides = {"TELEMETRY_SCHEDULER": "0", "REQUIRE_API_KEY": "0", "DASHBOARD_REQUIRE_LOGIN": "0"}
    with own_server(tmp_path_factory.mktemp("browser"), "telemetry_browser", **overrides) as live:
        seed(live)
        yield live


def seed(live: LiveServer) -> None:
    """The STAFF and VIEWER users, and ten minutes of history for three services with one firing alert."""
    create_superuser(live.env, STAFF[0], STAFF[1], "oncall@example.com")
    make_viewer = "from django.contrib.auth.models import User; User.objects.create_user({!r}, password={!r})".format(
        *VIEWER
    )
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", make_viewer],
        cwd=ROOT,
        env=live.env,
        check=True,
        capture_output=True,
    )
    # Ten minutes of history for three services, all five types, and one firing alert.
    now = datetime.now(UTC)
    base = {"latency": 120.0, "error_rate": 0.01, "throughput": 400.0, "cpu": 40.0, "memory": 55.0}
    history = [
        point(service, metric, value * (1 + 0.1 * ((i * 7 + n) % 5 - 2) / 2), now - timedelta(seconds=600 - i * 10))
        for i in range(60)
        for n, service in enumerate(SEED_SERVICES)
        for metric, value in base.items()
    ]
    post(live, history)
    post(live, [point("database", "cpu", 97.0, now - timedelta(seconds=5))])


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, base_url=server.url)
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    page.on("response", lambda r: page.console_errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    yield page
    context.close()


def open_live(page, path: str = "/") -> None:
    page.goto(path)
    page.wait_for_selector('#connection[data-state="live"]', timeout=15_000)
    # Every chart has drawn its first answer from the data endpoint.
    page.wait_for_function(
        "() => Telemetry.charts.size > 0 && [...Telemetry.charts.values()].every("
        "s => document.getElementById(s.canvas.getAttribute('aria-describedby')).textContent.indexOf('Loading') < 0)",
        timeout=15_000,
    )


def chart_json(page, chart_id: str, expression: str):
    return page.evaluate(f"() => {{ const c = Telemetry.chart({chart_id!r}); return {expression}; }}")


def test_the_overview_loads_with_all_six_components_showing_data_and_no_console_errors(page):
    open_live(page)
    assert page.locator("#cards .card").count() == 5
    assert "critical" in page.locator("#cards article[data-metric=cpu]").text_content()
    assert chart_json(page, "chart-latency", "c.data.datasets.map(d => d.key)") == ["p50", "p95", "p99"]
    assert chart_json(page, "chart-latency", "c.data.datasets[0].data.length") >= 20
    stacked = chart_json(page, "chart-throughput", "c.data.datasets.map(d => d.key)")
    assert set(SEED_SERVICES) <= set(stacked)
    assert set(SEED_SERVICES) <= set(chart_json(page, "chart-error-rate", "c.data.labels"))
    assert chart_json(page, "chart-error-rate", "c.options.plugins.thresholdLines.thresholds.warning") == 0.05
    assert page.locator("#matrix tbody tr").count() >= 3
    assert page.locator("#matrix td.status-critical").count() >= 1  # database cpu
    assert "database cpu 97%" in page.locator("#alerts").text_content()
    # The numbers are reachable as text, and the charts have accessible names.
    assert "P95" in page.locator("#chart-latency-text").text_content()
    assert "response time" in page.get_attribute("#chart-latency", "aria-label").lower()
    assert chart_json(page, "chart-latency", "c.options.animation") is False
    assert chart_json(page, "chart-latency", "c.options.parsing") is False
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)
    assert page.console_errors == []


def test_a_point_posted_over_http_appears_in_the_chart(page, server):
    open_live(page)
    post(server, [point("probe", "throughput", 777.0)])
    page.wait_for_function(
        "() => Telemetry.chart('chart-throughput').data.datasets.some("
        "d => d.key === 'probe' && d.data.some(p => p.y === 777))",
        timeout=WAIT_MS,
    )
    page.wait_for_function("() => document.getElementById('chart-throughput-text').textContent.includes('probe')")
    assert page.console_errors == []


def test_the_live_charts_are_fed_by_one_summary_frame_a_second_not_by_raw_points(page, server):
    sent: list[str] = []
    received: list[str] = []

    def watch(ws) -> None:
        ws.on("framesent", lambda payload: sent.append(str(payload)))
        ws.on("framereceived", lambda payload: received.append(str(payload)))

    page.on("websocket", watch)
    open_live(page)
    # One request: both values are published in the same tick, so the tick's mean is 200 over 2 points.
    post(server, [point("summary-probe", "throughput", 100.0), point("summary-probe", "throughput", 300.0)])
    page.wait_for_function(
        "() => Telemetry.chart('chart-throughput').data.datasets.some("
        "d => d.key === 'summary-probe' && d.data.some(p => p.y === 200 && p.c === 2))",
        timeout=WAIT_MS,
    )
    subscribes = [json.loads(m) for m in sent if '"subscribe"' in m]
    assert subscribes and all(m.get("mode") == "summary" and m.get("interval") == 1 for m in subscribes)
    kinds = {json.loads(m)["type"] for m in received}
    assert "summary" in kinds and not kinds & {"metric", "metrics"}
    assert page.console_errors == []


def test_the_cards_pick_up_streamed_points_on_their_slower_refresh(page, server):
    open_live(page)
    card = "#cards article[data-metric=throughput] .card-value"
    before = page.locator(card).text_content()
    post(server, [point("cards-probe", "throughput", 250000.0)])
    # Cards refresh at most every 5 s (SUMMARY_DELAY in dashboard.js), not on every point.
    page.wait_for_function(
        f"(before) => document.querySelector({card!r}).textContent !== before", arg=before, timeout=WAIT_MS
    )
    total = float(page.locator(card).text_content().replace("req/s", "").replace(",", ""))
    assert total >= 250000
    assert page.console_errors == []


def test_an_alert_opening_point_appears_in_the_alert_panel(page, server):
    open_live(page)
    answer = post(server, [point("checkout", "latency", 2500.0)])
    assert answer["alert"]["severity"] == "critical"
    page.wait_for_function(
        "() => document.getElementById('alerts').textContent.includes('checkout latency 2500 ms')", timeout=WAIT_MS
    )
    # The opening is marked on the latency chart.
    marks = chart_json(page, "chart-latency", "c.options.plugins.alertMarks.marks.map(m => m.service)")
    assert "checkout" in marks
    assert page.console_errors == []


def test_switching_the_time_range_re_renders_and_updates_the_url(page):
    open_live(page)
    page.click("label.seg:has(input[value='6h'])")
    page.wait_for_url("**/?range=6h*", timeout=10_000)
    page.wait_for_function("() => Telemetry.charts.get('chart-latency').rangeMs === 6 * 3600 * 1000", timeout=10_000)
    assert "range=6h" in page.get_attribute("#chart-latency", "data-url")
    assert page.get_attribute("#overview-body", "data-range") == "6h"
    assert "avg 6h" in page.locator("#cards").text_content()
    page.wait_for_function("() => Telemetry.chart('chart-latency').data.datasets.length === 3", timeout=10_000)
    # Reloading the shared URL shows the same view.
    page.reload()
    assert page.locator("input[name=range][value='6h']").is_checked()
    assert page.console_errors == []


def log_in(page, username: str, password: str) -> None:
    """Through the dashboard's own login page, as a person would."""
    page.goto("/login/?next=/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: "/login/" not in url)


def test_a_staff_user_acknowledges_an_alert_from_the_panel(page, server):
    post(server, [point("billing", "memory", 99.0)])
    log_in(page, *STAFF)
    open_live(page)
    item = page.locator("#alerts li.alert", has_text="billing memory")
    item.get_by_role("button", name="Acknowledge").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#alerts li.alert')].some("
        "li => li.textContent.includes('billing memory') && li.textContent.includes('acknowledged by oncall'))",
        timeout=10_000,
    )
    alerts = httpx.get(server.url + "/metrics/alerts?service=billing", timeout=5).json()["alerts"]
    assert alerts[0]["acknowledged"] is True and alerts[0]["acknowledged_by"] == "oncall"
    assert page.locator('a[href="/admin/"]').count() == 1
    assert page.console_errors == []


def test_a_viewer_logs_in_on_the_dark_login_page_and_sees_alerts_without_buttons(page, server):
    post(server, [point("ledger", "cpu", 99.0)])
    log_in(page, *VIEWER)
    open_live(page)
    page.wait_for_function("() => document.getElementById('alerts').textContent.includes('ledger cpu')")
    assert page.locator("#alerts button").count() == 0
    assert "need a staff account" in page.locator("#alerts").text_content()
    assert page.locator('a[href="/admin/"]').count() == 0
    page.get_by_role("button", name="Log out").click()
    page.wait_for_selector("text=Log in")
    assert page.console_errors == []


def test_the_dashboard_runs_under_its_content_security_policy(page, server):
    response = page.goto("/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    open_live(page)
    # An htmx swap, the WebSocket and chart fetches all ran under the policy.
    page.click("label.seg:has(input[value='6h'])")
    page.wait_for_url("**/?range=6h*", timeout=10_000)
    page.wait_for_function("() => Telemetry.charts.get('chart-latency').rangeMs === 6 * 3600 * 1000", timeout=10_000)
    assert page.evaluate("() => window.__cspViolations") == []
    open_live(page, "/services/api/")
    assert page.evaluate("() => window.__cspViolations") == []
    page.goto("/login/")
    assert page.evaluate("() => window.__cspViolations") == []
    assert page.console_errors == []


def test_the_page_says_so_when_the_server_goes_away(browser, tmp_path):
    overrides = {"TELEMETRY_SCHEDULER": "0"}
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        pytest.skip("covered in the SQLite run; needs a server of its own")
    live = LiveServer(tmp_path, **overrides).start()
    context = browser.new_context(base_url=live.url)
    page = context.new_page()
    try:
        page.goto("/")
        page.wait_for_selector('#connection[data-state="live"]', timeout=15_000)
        live.stop()
        page.wait_for_selector("#unreachable:not([hidden])", timeout=WAIT_MS)
        assert page.get_attribute("#connection", "data-state") in ("offline", "reconnecting")
    finally:
        context.close()
        live.stop()
