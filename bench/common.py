"""Shared pieces of the benchmark: results, the server under test, load tools.

Every figure is a `Figure` holding the measured value beside a baseline taken
in the same run, so the ratio stays meaningful on a shared, noisy machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.live import LiveServer, migrate, server_env  # noqa: E402

CORES = os.cpu_count() or 1
PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"


@dataclass
class Figure:
    key: str
    title: str
    value: float | None
    unit: str
    target: str
    passed: bool | None
    baseline: float | None = None
    baseline_label: str = ""
    ratio: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"cores": CORES}


@dataclass
class Config:
    quick: bool
    postgres: bool
    workdir: Path
    only: set[str] | None = None

    def size(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


def pct(values: Any, q: float) -> float | None:
    arr = np.asarray(values, dtype=np.float64)
    if not len(arr):
        return None
    return float(np.percentile(arr, q))


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def latency_summary(seconds: Any) -> dict[str, float | None]:
    arr = np.asarray(seconds, dtype=np.float64)
    return {
        "n": int(len(arr)),
        "p50_ms": ms(pct(arr, 50)),
        "p95_ms": ms(pct(arr, 95)),
        "p99_ms": ms(pct(arr, 99)),
        "max_ms": ms(float(arr.max())) if len(arr) else None,
    }


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return round(value / baseline, 3)


# --- the server under test --------------------------------------------------------


def server_overrides(cfg: Config, database: str | None = None, **extra: str) -> dict[str, str]:
    """Production-like settings: DEBUG off (no query log), no scheduler unless asked."""
    env = {
        "DEBUG": "0",
        "SECRET_KEY": "bench-secret-key-not-for-production-0123456789abcdef",
        "REQUIRE_API_KEY": "0",
        "TELEMETRY_SCHEDULER": "0",
        "LOG_LEVEL": "WARNING",
        "INGEST_MAX_POINTS": "10000",
    }
    if cfg.postgres:
        env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{database or 'telemetry_bench'}"
        env["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
    else:
        env.pop("DATABASE_URL", None)
    env.update(extra)
    return env


@contextmanager
def running_server(
    cfg: Config, data_dir: Path, database: str | None = None, migrate_first: bool = True, **extra: str
) -> Iterator[LiveServer]:
    env = server_overrides(cfg, database, **extra)
    if migrate_first:
        migrate_database(cfg, data_dir, database)
    server = LiveServer(data_dir, migrate_first=False, env=env)
    if not cfg.postgres:
        # tests.live keeps an inherited DATABASE_URL; the SQLite bench must not.
        server.env.pop("DATABASE_URL", None)
        server.env.pop("REDIS_URL", None)
    server.start(timeout=60)
    try:
        yield server
    finally:
        server.stop()


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class RssSampler:
    """A process's RSS every half second on a thread, from start() until stop(); `values` in MB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.values: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_mb(self.pid)
            if value is not None:
                self.values.append(value)
            self._stop.wait(0.5)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(5)
        return self.values


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a live process has used so far (all its threads), from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start at field 3 (state);
    # utime and stime are fields 14 and 15.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds every core together has spent not idle since boot, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    # guest time is already counted in user/nice, so stop at steal (fields 1-8).
    return (sum(ticks[:8]) - idle) / CLOCK_TICKS


def fresh_dir(cfg: Config, name: str) -> Path:
    path = cfg.workdir / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="telemetry-bench-"))


# --- PostgreSQL bench databases -------------------------------------------------------


def pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


def pg_recreate(name: str, template: str | None = None) -> None:
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    suffix = f' TEMPLATE "{template}"' if template else ""
    pg_admin(f'CREATE DATABASE "{name}"{suffix}')


def migrate_database(cfg: Config, data_dir: Path, database: str | None = None) -> None:
    """Migrate a fresh database; SQLite copies one migrated template (migrate costs seconds)."""
    if not cfg.postgres:
        template = cfg.workdir / "template" / "telemetry.sqlite3"
        if not template.exists():
            template.parent.mkdir(parents=True, exist_ok=True)
            env = server_env(template.parent, **server_overrides(cfg, database))
            env.pop("DATABASE_URL", None)
            migrate(env)
        shutil.copy2(template, data_dir / "telemetry.sqlite3")
        return
    env = server_env(data_dir, **server_overrides(cfg, database))
    migrate(env)


# --- wrk ---------------------------------------------------------------------------

WRK_LUA = r"""
local bodies = {}
local n = 0
local path = os.getenv("BENCH_BODIES")
if path then
  for line in io.lines(path) do
    n = n + 1
    bodies[n] = line
  end
end
local i = 0
-- BENCH_PORTS="8001 8002": wrk thread k connects to port k mod n (one host, several
-- processes) and counts its responses, reported per port; unset, every thread uses
-- the URL's port and no response() hook slows wrk down.
local ports = {}
for p in string.gmatch(os.getenv("BENCH_PORTS") or "", "%d+") do
  ports[#ports + 1] = p
end
local threads = {}
setup = function(thread)
  local k = #threads + 1
  threads[k] = thread
  if #ports > 0 then
    local port = ports[(k - 1) % #ports + 1]
    thread.addr = wrk.lookup(wrk.host, port)[1]
    thread:set("port", port)
  end
end
responses = 0
if #ports > 0 then
  response = function(status, headers, body)
    responses = responses + 1
  end
end
local function by_port()
  local counts, order = {}, {}
  for _, thread in ipairs(threads) do
    local port = thread:get("port")
    if port then
      if not counts[port] then
        order[#order + 1] = port
        counts[port] = 0
      end
      counts[port] = counts[port] + thread:get("responses")
    end
  end
  local parts = {}
  for _, port in ipairs(order) do
    parts[#parts + 1] = string.format('"%s":%d', port, counts[port])
  end
  return "{" .. table.concat(parts, ",") .. "}"
end
wrk.headers["Content-Type"] = "application/json"
request = function()
  if n == 0 then
    return wrk.format("GET")
  end
  i = (i % n) + 1
  return wrk.format("POST", nil, nil, bodies[i])
end
done = function(summary, latency, requests)
  io.stderr:write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"responses_by_port":%s}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, by_port()))
end
"""


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str,
    seconds: float,
    connections: int,
    bodies: list[bytes] | None,
    workdir: Path,
    threads: int = 1,
    ports: list[int] | None = None,
) -> dict[str, Any]:
    """Closed-loop load with wrk; one body per line in `bodies` (POST), or GET when None.

    `ports` sends wrk's threads round-robin to those ports on the URL's host (thread k
    to ports[k % n], its connections with it), so one run loads several processes;
    the result's `responses_by_port` then says how many answers each port gave.
    """
    script = workdir / "bench.lua"
    script.write_text(WRK_LUA)
    env = dict(os.environ)
    if bodies:
        body_file = workdir / f"bodies-{len(bodies)}-{len(bodies[0])}.ndjson"
        body_file.write_bytes(b"\n".join(bodies) + b"\n")
        env["BENCH_BODIES"] = str(body_file)
    else:
        env.pop("BENCH_BODIES", None)
    if ports:
        env["BENCH_PORTS"] = " ".join(map(str, ports))
    else:
        env.pop("BENCH_PORTS", None)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    for line in proc.stderr.splitlines():
        if line.startswith("BENCHJSON "):
            data = json.loads(line[len("BENCHJSON ") :])
            data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
            data["errors"] = sum(
                data[k] for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")
            )
            return data
    raise RuntimeError(f"wrk gave no result: {proc.stdout[-1000:]} {proc.stderr[-1000:]}")


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
