"""`make soak`: a long run at a steady load, watching for leaks, errors and unbounded growth.

    python -m bench.soak --minutes 30            # the standing soak (not in CI)
    python -m bench.soak --minutes 3 --sample-seconds 15   # a short proof run
    python -m bench.soak --minutes 120 --tracemalloc       # + what grew between minute 30 and the end

One daphne server (SQLite in WAL mode, its scheduler on, in a fresh temp dir;
--database-url for PostgreSQL) takes --rate points/s in batches from a paced
(open-loop) loader, while --clients WebSocket clients subscribe in batch mode
(as the dashboard does) and headless Chromium keeps the dashboard open.
Every --sample-seconds the server's RSS, open file descriptors, database size,
oldest stored point and error counts are appended to bench/soak.json (written
after each sample, so an interrupted run keeps what it measured).

With --tracemalloc the server traces its allocations (bench/memtrace.py) and
snapshots them at --tracemalloc-at minutes and at the end; the summary's
"tracemalloc" lists the 20 source lines that grew most in between.

Done means: memory growth under 10 % after the warm-up (the first 5 minutes,
or the first third of a shorter run), zero errors, and a database whose oldest
raw point is within the raw retention.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import memtrace  # noqa: E402
from tests.live import LiveServer  # noqa: E402

SERVICES = ("auth", "api", "database", "cache", "queue")
RANGES = {"latency": (5, 900), "error_rate": (0, 0.2), "throughput": (50, 900), "cpu": (5, 99), "memory": (20, 95)}
CHROMIUM = "/usr/bin/chromium"
GROWTH_TARGET = 0.10
# A long run is judged on its tail: from the first tracemalloc snapshot (minute
# 30 of a 2-hour soak, so "the last 90 minutes") to the end, memory is flat.
LATE_GROWTH_TARGET = 0.05


@dataclass
class Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    values: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, amount: int = 1) -> None:
        with self.lock:
            self.values[name] = self.values.get(name, 0) + amount

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.values)


def make_bodies(batch: int, count: int = 200) -> list[bytes]:
    """Pre-encoded batches without timestamps (the server stamps them "now")."""
    rng = random.Random(42)
    bodies = []
    for _ in range(count):
        points = []
        for _ in range(batch):
            metric = rng.choice(list(RANGES))
            low, high = RANGES[metric]
            points.append(
                {
                    "service": rng.choice(SERVICES),
                    "metric_type": metric,
                    "value": round(rng.uniform(low, high), 4),
                    "tags": {"region": rng.choice(("eu", "us", "ap")), "host": f"h{rng.randrange(4)}"},
                }
            )
        bodies.append(orjson.dumps(points))
    return bodies


# --- load ---------------------------------------------------------------------


class PacedIngest:
    """Posts one body every 1/rate s regardless of answers (open loop), from its own process.

    Its own process and a bare HTTP/1.1 keep-alive client: httpx sharing the
    parent's GIL with Playwright took more CPU than the server's ingest itself
    and made the loader, not the server, the bottleneck. Latency is counted
    from the moment a request was due, so a slow server cannot hide behind a
    loader that waits for it (no coordinated omission).
    """

    def __init__(self, url: str, bodies: list[bytes], requests_per_second: float) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.results = ctx.Queue()
        self.stop_event = ctx.Event()
        self.process = ctx.Process(
            target=_ingest_main,
            args=(url, bodies, requests_per_second, self.results, self.stop_event),
            name="soak-ingest",
            daemon=True,
        )
        self.counts: dict[str, int] = {}
        self.latencies: list[float] = []  # of the current sample window

    def start(self) -> None:
        self.process.start()

    def join(self, timeout: float) -> None:
        self.process.join(timeout)
        self.drain()
        if self.process.is_alive():
            self.process.kill()

    def drain(self) -> None:
        """Take the counts and latencies the loader reported since the last call."""
        while True:
            try:
                counts, latencies = self.results.get_nowait()
            except Exception:  # queue.Empty, or the loader is gone
                return
            for name, amount in counts.items():
                self.counts[name] = self.counts.get(name, 0) + amount
            self.latencies.extend(latencies)


def _ingest_main(url: str, bodies: list[bytes], rate: float, results: Any, stop_event: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (
        f"POST /metrics/ingest HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        "Content-Length: {length}\r\n\r\n"
    )
    requests = [head.format(length=len(body)).encode() + body for body in bodies]
    counts: dict[str, int] = {}
    latencies: list[float] = []

    def add(name: str, amount: int = 1) -> None:
        counts[name] = counts.get(name, 0) + amount

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bool:
        """One request and its answer; True when the server keeps the connection open."""
        writer.write(request)
        status = int((await reader.readuntil(b"\r\n")).split()[1])
        length, keep = 0, True
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and b"close" in value.lower():
                keep = False
        payload = await reader.readexactly(length)
        if status == 200:
            add("ingest_ok")
            add("points_acked", int(orjson.loads(payload)["accepted"]))
        else:
            add(f"ingest_http_{status}")
        return keep

    async def connection(queue: asyncio.Queue) -> None:
        reader = writer = None
        while True:
            due, request = await queue.get()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                keep = await asyncio.wait_for(exchange(reader, writer, request), 30)
                latencies.append(time.perf_counter() - due)
            except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                add(f"ingest_error_{type(exc).__name__}")
                keep = False
            if not keep and writer is not None:
                writer.close()
                reader = writer = None

    async def main() -> None:
        nonlocal counts, latencies
        queue: asyncio.Queue = asyncio.Queue()
        workers = [asyncio.create_task(connection(queue)) for _ in range(32)]
        interval, next_at, i = 1.0 / rate, time.perf_counter(), 0
        reported = time.perf_counter()
        while not stop_event.is_set():
            now = time.perf_counter()
            if now - reported >= 0.5:
                results.put((counts, latencies))
                counts, latencies, reported = {}, [], now
            delay = next_at - now
            if delay > 0:
                await asyncio.sleep(min(delay, 0.5))
                continue
            if queue.qsize() >= 256:  # the server is far behind: count it, do not pile up
                add("ingest_skipped")
            else:
                queue.put_nowait((next_at, requests[i % len(requests)]))
            i += 1
            next_at += interval
        deadline = time.perf_counter() + 30
        while queue.qsize() and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # the answers still in flight
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        results.put((counts, latencies))

    asyncio.run(main())


WS_COUNTERS = ("ws_frames", "ws_points", "ws_reconnects", "ws_errors", "ws_error_frames", "ws_lag_frames")


class WebSocketCrowd:
    """N batch-mode subscribers in their own process (parsing their frames must not starve the
    loader of the GIL); counts frames and points, reconnects (and counts) on any close."""

    def __init__(self, ws_url: str, clients: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.shared = ctx.Array("q", len(WS_COUNTERS))
        self.stop_event = ctx.Event()
        self.process = ctx.Process(
            target=_crowd_main, args=(ws_url, clients, self.shared, self.stop_event), name="soak-ws", daemon=True
        )

    def start(self) -> None:
        self.process.start()

    def join(self, timeout: float) -> None:
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()

    def snapshot(self) -> dict[str, int]:
        with self.shared.get_lock():
            return dict(zip(WS_COUNTERS, self.shared[:], strict=True))


def _crowd_main(ws_url: str, clients: int, shared: Any, stop_event: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    index = {name: i for i, name in enumerate(WS_COUNTERS)}
    local = [0] * len(WS_COUNTERS)

    def add(name: str, amount: int = 1) -> None:
        local[index[name]] += amount

    async def client(n: int) -> None:
        import websockets

        await asyncio.sleep(n * 0.02)
        first = True
        while not stop_event.is_set():
            if not first:
                add("ws_reconnects")
                await asyncio.sleep(1)
            first = False
            try:
                async with websockets.connect(ws_url, open_timeout=30, max_size=None) as ws:
                    await ws.send(orjson.dumps({"action": "subscribe", "batch": True}).decode())
                    async for message in ws:
                        frame = orjson.loads(message)
                        if frame["type"] == "metrics":
                            add("ws_frames")
                            add("ws_points", len(frame["data"]))
                        elif frame["type"] == "lag":
                            add("ws_lag_frames")
                        elif frame["type"] == "error":
                            add("ws_error_frames")
            except asyncio.CancelledError:
                return
            except Exception:  # counted as an error; the client reconnects
                add("ws_errors")

    async def main() -> None:
        tasks = [asyncio.create_task(client(i)) for i in range(clients)]
        while not stop_event.is_set():
            await asyncio.sleep(0.5)
            with shared.get_lock():
                shared[:] = local
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with shared.get_lock():
            shared[:] = local

    asyncio.run(main())


class Dashboard(threading.Thread):
    """The dashboard open in headless Chromium; page errors and failed requests are counted."""

    def __init__(self, url: str, counters: Counters) -> None:
        super().__init__(name="soak-browser", daemon=True)
        self.url, self.counters = url, counters
        self.stop_event = threading.Event()
        self.status = "starting"

    def run(self) -> None:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as exc:
            self.status = f"unavailable: playwright not installed ({exc})"
            return
        if not Path(CHROMIUM).exists():
            self.status = f"unavailable: {CHROMIUM} not found"
            return
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
                page = browser.new_page()
                page.on("pageerror", lambda exc: self._error("browser_page_errors", exc))
                page.on("console", self._console)
                page.on("requestfailed", lambda req: self._error("browser_failed_requests", req.url))
                page.goto(self.url + "/", wait_until="load", timeout=60_000)
                self.status = "open"
                while not self.stop_event.is_set():
                    page.wait_for_timeout(1000)
                    self.counters.add("browser_seconds_open")
                browser.close()
                self.status = "closed"
        except Exception as exc:
            self.status = f"unavailable: {type(exc).__name__}: {exc}"[:300]

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self._error("browser_console_errors", message.text)

    def _error(self, name: str, detail: object) -> None:
        self.counters.add(name)
        if self.counters.snapshot().get(name, 0) <= 5:
            print(f"  {name}: {str(detail)[:200]}", flush=True)


# --- sampling -----------------------------------------------------------------


def proc_memory_mb(pid: int) -> dict[str, float]:
    """VmRSS, and its parts: RssAnon (the heap: where a leak shows) and RssFile (mapped files,
    SQLite's mmap of the database among them)."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                found[name] = round(int(rest.split()[0]) / 1024, 1)
    return found


def proc_rss_mb(pid: int) -> float:
    return proc_memory_mb(pid).get("VmRSS", float("nan"))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sqlite_size_mb(db: Path) -> float:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 1e6


def postgres_size_and_oldest(url: str) -> tuple[float, float | None]:
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        age = conn.execute("SELECT EXTRACT(EPOCH FROM now() - MIN(timestamp)) FROM metrics_point").fetchone()
    return (size[0] if size else 0) / 1e6, (float(age[0]) if age and age[0] is not None else None)


def oldest_point_age_seconds(db: Path) -> float | None:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        row = conn.execute("SELECT MIN(timestamp) FROM metrics_point").fetchone()
    if not row or row[0] is None:
        return None
    oldest = datetime.fromisoformat(row[0]).replace(tzinfo=UTC)
    return (datetime.now(UTC) - oldest).total_seconds()


ERROR_PREFIXES = ("ingest_error_", "ingest_http_")
ERROR_NAMES = (
    "ws_reconnects",
    "ws_errors",
    "ws_error_frames",
    "browser_page_errors",
    "browser_failed_requests",
    "browser_console_errors",
)


def error_count(counters: dict[str, int]) -> int:
    return sum(v for k, v in counters.items() if k.startswith(ERROR_PREFIXES) or k in ERROR_NAMES)


def _window_growth(values: list[float], window: int) -> float | None:
    """Growth from the mean of the first `window` values to the mean of the last `window`."""
    if not values:
        return None
    early, late = values[:window], values[-window:]
    base = sum(early) / len(early)
    return round((sum(late) / len(late) - base) / base, 4) if base else None


def _late_growth(samples: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Growth from the tracemalloc minute to the end, five-sample means as above."""
    if not getattr(args, "tracemalloc", False):  # summaries of older runs' configs lack it
        return {}
    at = min(args.tracemalloc_at, args.minutes / 2) * 60
    late = [s for s in samples if s["elapsed_s"] >= at]
    if len(late) < 10:
        return {"late_growth": None}
    rss = [s["rss_mb"] for s in late]
    heap = [s["memory_mb"].get("RssAnon", 0.0) for s in late if "memory_mb" in s]
    growth = _window_growth(rss, 5)
    return {
        "late_growth_from_minute": round(at / 60, 1),
        "late_growth": growth,
        "late_heap_growth": _window_growth(heap, 5),
        "late_memory_flat": growth is not None and growth < LATE_GROWTH_TARGET,
    }


def summarise(samples: list[dict[str, Any]], args: argparse.Namespace, retention_hours: float) -> dict[str, Any]:
    warmup = min(300.0, args.minutes * 60 / 3)
    after = [s for s in samples if s["elapsed_s"] >= warmup] or samples[-1:]
    base, last = after[0], samples[-1]
    # One sample swings by +-15 MB as SQLite maps and unmaps pages of the
    # database file (RssFile), so "flat" compares the mean of the first five
    # post-warm-up samples with the mean of the last five: a leak still shows,
    # a sampling accident does not. The first-to-last figure is kept beside it.
    window = max(1, min(5, len(after) // 3))
    rss = [s["rss_mb"] for s in after]
    heap = [s["memory_mb"].get("RssAnon", 0.0) for s in after if "memory_mb" in s]
    growth = _window_growth(rss, window)
    first_last = (last["rss_mb"] - base["rss_mb"]) / base["rss_mb"] if base["rss_mb"] else None
    errors = error_count(last["counters"])
    oldest = max((s["oldest_point_age_s"] or 0) for s in samples)
    within = oldest <= retention_hours * 3600 + args.prune_seconds + 120
    acked = last["counters"].get("points_acked", 0)
    achieved = acked / max(last["elapsed_s"], 1)
    sustained = achieved >= 0.95 * args.rate
    return {
        "warmup_s": warmup,
        "rss_mb_after_warmup": round(base["rss_mb"], 1),
        "rss_mb_final": round(last["rss_mb"], 1),
        "rss_mb_peak": round(max(s["rss_mb"] for s in samples), 1),
        "memory_growth_after_warmup": growth,
        "memory_growth_window_samples": window,
        "memory_growth_first_to_last": None if first_last is None else round(first_last, 4),
        "heap_growth_after_warmup": _window_growth(heap, window),
        **_late_growth(samples, args),
        "memory_flat": growth is not None and growth < GROWTH_TARGET,
        "open_fds_first_last": [samples[0]["open_fds"], last["open_fds"]],
        "db_mb_final": round(last["db_mb"], 2),
        "oldest_point_age_s_max": round(oldest, 1),
        "db_within_retention": within,
        "points_acked": acked,
        "target_points_per_s": args.rate,
        "achieved_points_per_s": round(achieved, 1),
        "rate_sustained": sustained,
        "requests_not_sent_server_behind": last["counters"].get("ingest_skipped", 0),
        "ws_points_received": last["counters"].get("ws_points", 0),
        "errors": errors,
        "passed": bool(growth is not None and growth < GROWTH_TARGET and errors == 0 and within and sustained),
    }


def take_snapshot(pid: int, prefix: Path, n: int, timeout: float = 120.0) -> Path | None:
    """Ask the server (SIGUSR1, see bench/memtrace.py) for snapshot n and wait until it is written."""
    path = memtrace.snapshot_path(prefix, n)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)
    return path


def tracemalloc_summary(snapshots: list[Path | None], args: argparse.Namespace) -> dict[str, Any]:
    if len(snapshots) < 2 or None in snapshots:
        return {"error": f"snapshots missing: {snapshots}"}
    first, last = snapshots[0], snapshots[1]
    assert first is not None and last is not None
    at = min(args.tracemalloc_at, args.minutes / 2)
    return {"between_minutes": [at, args.minutes]} | memtrace.top_growth(first, last)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=2000, help="points per second")
    parser.add_argument("--batch", type=int, default=20, help="points per request")
    parser.add_argument("--clients", type=int, default=100, help="WebSocket clients")
    parser.add_argument("--sample-seconds", type=float, default=60)
    parser.add_argument("--prune-seconds", type=int, default=30, help="the server's PRUNE_INTERVAL_SECONDS")
    parser.add_argument(
        "--raw-retention-hours",
        type=float,
        default=0.05,
        help="the server's RAW_RETENTION_HOURS; short, so the database reaches its steady size early in the run",
    )
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (a migrated, dedicated database)")
    parser.add_argument("--redis-url", default="", help="Redis URL for the channel layer (default: in-memory)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "soak.json"))
    parser.add_argument(
        "--tracemalloc", action="store_true", help="trace the server's allocations; diff two snapshots in the summary"
    )
    parser.add_argument(
        "--tracemalloc-at",
        type=float,
        default=30,
        help="minute of the first snapshot (the second is at the end); clamped to half a shorter run",
    )
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="telemetry-soak-"))
    retention_hours = args.raw_retention_hours
    env = {
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "DEBUG": "1",  # daphne serves the dashboard's static files only with DEBUG on, as in `make run`
        "REQUIRE_API_KEY": "0",
        "TELEMETRY_SCHEDULER": "1",
        "PRUNE_INTERVAL_SECONDS": str(args.prune_seconds),
        "RAW_RETENTION_HOURS": str(retention_hours),
        "LOG_LEVEL": "WARNING",
    }
    trace_prefix = workdir / "tracemalloc"
    if args.tracemalloc:
        env[memtrace.ENV] = str(trace_prefix)
    server = LiveServer(workdir, env=env).start()
    assert server.proc is not None
    pid = server.proc.pid
    db = workdir / "telemetry.sqlite3"
    counters = Counters()
    ingest = PacedIngest(server.url, make_bodies(args.batch), args.rate / args.batch)
    crowd = WebSocketCrowd(server.ws_url, args.clients)
    browser = Dashboard(server.url, counters)
    workers: list[Any] = [] if args.no_browser else [browser]
    if args.no_browser:
        browser.status = "disabled (--no-browser)"

    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())

    samples: list[dict[str, Any]] = []
    snapshots: list[Path | None] = []
    out = Path(args.out)
    print(
        f"soak: {args.minutes:g} min at {args.rate:g} points/s ({args.batch}/request), {args.clients} WebSocket clients, "
        f"server {server.url} (pid {pid}), data in {workdir}",
        flush=True,
    )
    started = time.monotonic()
    try:
        crowd.start()
        ingest.start()
        for worker in workers:
            worker.start()
        deadline = started + args.minutes * 60
        next_sample = started + args.sample_seconds
        trace_at = started + min(args.tracemalloc_at, args.minutes / 2) * 60 if args.tracemalloc else None
        while not stopping.is_set():
            now = time.monotonic()
            if trace_at is not None and now >= trace_at:
                trace_at = None
                print(f"  t={now - started:>7.0f}s tracemalloc snapshot 1", flush=True)
                snapshots.append(take_snapshot(pid, trace_prefix, 1))
            if now >= next_sample or now >= deadline:
                ingest.drain()
                latencies, ingest.latencies = ingest.latencies, []
                lat_ms = sorted(x * 1000 for x in latencies)
                if args.database_url:
                    db_mb, oldest_age = postgres_size_and_oldest(args.database_url)
                else:
                    db_mb, oldest_age = sqlite_size_mb(db), oldest_point_age_seconds(db)
                sample: dict[str, Any] = {
                    "elapsed_s": round(now - started, 1),
                    "at": datetime.now(UTC).isoformat(),
                    "rss_mb": round(proc_rss_mb(pid), 1),
                    "memory_mb": proc_memory_mb(pid),
                    "open_fds": open_fds(pid),
                    "db_mb": round(db_mb, 2),
                    "oldest_point_age_s": oldest_age,
                    "ingest_p50_ms": round(lat_ms[len(lat_ms) // 2], 1) if lat_ms else None,
                    "ingest_p99_ms": round(lat_ms[int(len(lat_ms) * 0.99)], 1) if lat_ms else None,
                    "browser": browser.status,
                    "counters": counters.snapshot() | ingest.counts | crowd.snapshot(),
                }
                sample["errors"] = error_count(sample["counters"])
                samples.append(sample)
                print(
                    f"  t={sample['elapsed_s']:>7.0f}s rss={sample['rss_mb']:.1f} MB fds={sample['open_fds']} "
                    f"db={sample['db_mb']} MB acked={sample['counters'].get('points_acked', 0)} "
                    f"ws_points={sample['counters'].get('ws_points', 0)} p99={sample['ingest_p99_ms']} ms "
                    f"errors={sample['errors']} browser={browser.status}",
                    flush=True,
                )
                report = {
                    "config": vars(args) | {"raw_retention_hours": retention_hours},
                    "samples": samples,
                    "summary": summarise(samples, args, retention_hours),
                }
                out.write_text(json.dumps(report, indent=2) + "\n")
                if now >= deadline:
                    break
                next_sample += args.sample_seconds
            time.sleep(0.25)
    finally:
        if len(snapshots) == 1:
            # Taken under load, before the workers stop, like the first one.
            snapshots.append(take_snapshot(pid, trace_prefix, 2))
        for worker in [*workers, ingest, crowd]:
            worker.stop_event.set()
        for worker in [*workers, ingest, crowd]:
            worker.join(60)
        server.stop()
    if not samples:
        print("soak: stopped before the first sample")
        return 1
    summary = summarise(samples, args, retention_hours)
    if args.tracemalloc:
        summary["tracemalloc"] = tracemalloc_summary(snapshots, args)
        report = {"config": vars(args) | {"raw_retention_hours": retention_hours}, "samples": samples}
        out.write_text(json.dumps(report | {"summary": summary}, indent=2) + "\n")
    print("soak summary: " + json.dumps(summary))
    if server.log().count("Traceback"):
        print(f"server log has {server.log().count('Traceback')} tracebacks: {server.log_path}")
    print(f"wrote {out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
