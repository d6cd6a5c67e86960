"""Figures 8 and 9: what people browsing the product wait for, over the 2.16 M-row dataset.

8. The admin's change lists, logged in as staff: points, rollups, points page
   500, points filtered by service (p95 each; target < 200 ms).
9. The dashboard at 1 h, 24 h and 7 d: the overview and a service page, each
   page AND every chart-data request it makes (the `data-url` of each chart
   canvas in the rendered page, which static/js/charts.js fetches on load);
   p95 per request, the figure's value is the slowest request's p95 (target
   < 100 ms). 9d: the overview at 7 d in headless Chromium (Debian's, driven
   by Playwright), from navigation start until every chart has applied its
   data and drawn a frame (target < 1 s).

The database is figure 3's when it ran in this process, else built the same way.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path
from typing import Any

import httpx

from tests.live import create_superuser

from .common import ROOT, Config, Figure, latency_summary
from .common import running_server as _running_server
from .fig_query import DB, build_database

STAFF = ("bench-staff", "bench-staff-password-0123")
ADMIN_LISTS = {
    "a": ("admin point list", "/admin/metrics/point/"),
    "b": ("admin rollup list", "/admin/metrics/rollup/"),
    "c": ("admin point list page 500", "/admin/metrics/point/?p=500"),
    "d": ("admin point list, one service", "/admin/metrics/point/?service=api"),
}
ADMIN_TARGET_MS = 200.0
RANGES = {"a": "1h", "b": "24h", "c": "7d"}
PAGES = {"overview": "/", "service": "/services/api/"}
PAGE_TARGET_MS = 100.0
SETTLED_TARGET_MS = 1000.0
CHROMIUM = "/usr/bin/chromium"
# As tests/test_browser_dashboard.py launches it.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def shared_database(cfg: Config, log: Any) -> Path:
    data_dir = cfg.workdir / "query"
    if cfg.postgres or not (data_dir / "telemetry.sqlite3").exists():
        # Figure 3 leaves its PostgreSQL database too, but only a SQLite file
        # tells us reliably that it was built in this run.
        data_dir, _ = build_database(cfg, log)
    return data_dir


def timed_gets(client: httpx.Client, url: str, n: int, warmup: int = 2) -> tuple[list[float], httpx.Response]:
    last = None
    for _ in range(warmup):
        last = client.get(url)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        last = client.get(url)
        times.append(time.perf_counter() - t0)
        if last.status_code != 200:
            raise RuntimeError(f"GET {url} answered {last.status_code}: {last.text[:300]}")
    assert last is not None
    return times, last


def create_staff(server: Any) -> None:
    create_superuser(server.env, STAFF[0], STAFF[1], "b@example.com")


def log_in(client: httpx.Client, base: str) -> None:
    page = client.get(base + "/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, "no CSRF token on the login page"
    answer = client.post(
        base + "/admin/login/?next=/admin/",
        data={"username": STAFF[0], "password": STAFF[1], "csrfmiddlewaretoken": token.group(1), "next": "/admin/"},
    )
    if answer.status_code != 302:
        raise RuntimeError(f"staff login failed: {answer.status_code}")


def admin_figures(cfg: Config, server: Any, log: Any) -> list[Figure]:
    create_staff(server)
    figures = []
    with httpx.Client(timeout=60) as client:
        log_in(client, server.url)
        for key, (title, path) in ADMIN_LISTS.items():
            log(f"  fig 8{key}: {title} ...")
            times, last = timed_gets(client, server.url + path, cfg.size(5, 30))
            lat = latency_summary(times)
            figures.append(
                Figure(
                    key=f"10{key}_admin",
                    title=title,
                    value=lat["p95_ms"],
                    unit="ms p95",
                    target=f"p95 < {ADMIN_TARGET_MS:g} ms",
                    passed=lat["p95_ms"] is not None and lat["p95_ms"] < ADMIN_TARGET_MS,
                    details={**lat, "path": path, "bytes": len(last.content)},
                )
            )
    return figures


def chart_urls(page_html: str) -> list[str]:
    """The chart-data URLs the page's canvases fetch on load (static/js/charts.js `load`)."""
    return [html.unescape(u) for u in re.findall(r'<canvas[^>]*\sdata-url="([^"]+)"', page_html)]


def page_figures(cfg: Config, server: Any, log: Any) -> list[Figure]:
    figures = []
    n = cfg.size(5, 20)
    with httpx.Client(timeout=60) as client:
        for key, range_key in RANGES.items():
            log(f"  fig 9{key}: overview + service page and their chart data at {range_key} ...")
            requests: dict[str, dict[str, Any]] = {}
            for page_name, path in PAGES.items():
                times, page = timed_gets(client, f"{server.url}{path}?range={range_key}", n)
                requests[f"{page_name} page"] = latency_summary(times)
                for url in chart_urls(page.text):
                    times, _ = timed_gets(client, server.url + url, n)
                    requests[f"{page_name} {url}"] = latency_summary(times)
            worst = max(requests, key=lambda k: requests[k]["p95_ms"] or 0.0)
            value = requests[worst]["p95_ms"]
            figures.append(
                Figure(
                    key=f"11{key}_pages",
                    title=f"dashboard pages + chart data at {range_key} (slowest request)",
                    value=value,
                    unit="ms p95",
                    target=f"every request p95 < {PAGE_TARGET_MS:g} ms",
                    passed=value is not None and value < PAGE_TARGET_MS,
                    details={"slowest": worst, "requests": requests},
                )
            )
    figures.append(browser_figure(cfg, server, log))
    return figures


SETTLED_SCRIPT = """
(() => {
  // Counts chart loads (charts.js dispatches one of these per fetch) and
  // notes when the last of the page's charts has applied its data.
  let done = 0;
  const seen = () => {
    done += 1;
    const total = document.querySelectorAll("canvas[data-chart]").length;
    if (total && done >= total && window.__settledAt === undefined) {
      requestAnimationFrame(() => { window.__settledAt = performance.now(); });
    }
  };
  document.addEventListener("telemetry-fetch-ok", seen);
  document.addEventListener("telemetry-fetch-failed", () => { window.__chartFailed = true; seen(); });
})();
"""


def browser_figure(cfg: Config, server: Any, log: Any) -> Figure:
    key, title = "11d_settled", "overview settled in Chromium at 7 d"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return Figure(key, title, None, "ms p95", "", None, details={"skipped": "playwright is not installed"})
    if not Path(CHROMIUM).exists() or not (ROOT / "static" / "vendor" / "chart.umd.js").exists():
        return Figure(key, title, None, "ms p95", "", None, details={"skipped": "no Chromium or no front-end assets"})
    log(f"  fig 9d: {title} ...")
    static_root = ROOT / "static"

    def serve_static(route: Any) -> None:
        # A deployment serves /static/ from nginx, not daphne (DEBUG off): the
        # browser gets the files from disk here, as cheaply.
        rel = route.request.url.split("/static/", 1)[1].split("?", 1)[0]
        path = static_root / rel
        if not path.is_file():
            route.fulfill(status=404)
            return
        kind = "text/css" if path.suffix == ".css" else "application/javascript"
        route.fulfill(status=200, body=path.read_bytes(), headers={"Content-Type": kind})

    settled, failed = [], 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for i in range(cfg.size(3, 10) + 1):
                # A fresh context each time: no HTTP cache, as a first visit.
                context = browser.new_context(base_url=server.url)
                context.route("**/static/**", serve_static)
                context.add_init_script(SETTLED_SCRIPT)
                page = context.new_page()
                page.goto("/?range=7d")
                page.wait_for_function("() => window.__settledAt !== undefined", timeout=60_000)
                at, chart_failed = page.evaluate("() => [window.__settledAt, !!window.__chartFailed]")
                failed += bool(chart_failed)
                if i:  # the first load warms the server's caches and Chromium
                    settled.append(at / 1000.0)
                context.close()
        finally:
            browser.close()
    lat = latency_summary(settled)
    value = lat["p95_ms"]
    return Figure(
        key=key,
        title=title,
        value=value,
        unit="ms p95",
        target=f"< {SETTLED_TARGET_MS:g} ms from navigation start",
        passed=value is not None and value < SETTLED_TARGET_MS and not failed,
        details={**lat, "chart_fetch_failures": failed, "condition": "every chart's data applied + one frame"},
    )


def run(cfg: Config, log: Any) -> list[Figure]:
    data_dir = shared_database(cfg, log)
    figures: list[Figure] = []
    # Plain HTTP here (TLS ends in front of daphne in a deployment): cookies
    # marked Secure would never come back, and the staff login would fail CSRF.
    with _running_server(cfg, data_dir, DB, migrate_first=False, SECURE_COOKIES="0") as server:
        if not cfg.only or cfg.only & {"10"}:
            figures += admin_figures(cfg, server, log)
        if not cfg.only or cfg.only & {"11"}:
            figures += page_figures(cfg, server, log)
    return figures
