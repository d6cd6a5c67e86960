"""Shared pieces of the fault-injection tests (tests/test_faults_*.py).

- `sqlite_env()`: overrides that pin a LiveServer (or a manage.py subprocess) to
  its own SQLite file and the in-memory layer, whatever mode the suite runs in.
- `tagged_batch()`: points that carry a unique id, so a test can prove each
  acknowledged point is stored exactly once and no request is half-stored.
- `OwnRedis` / `OwnPostgres`: private servers on free ports that a test may
  stop and start without disturbing the shared ones other tests use.
"""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.live import ROOT, free_port, server_env

SQLITE_FILE = "telemetry.sqlite3"


# Tagged points create one series each: lift the cardinality guard for these tests.
UNCAPPED = {"MAX_SERIES_PER_SERVICE": "100000000"}


def sqlite_env(**extra: str) -> dict[str, str]:
    # A generous answer timeout: on a loaded CI box, load shedding (503 after
    # 5 s) is not what these tests are about; test_faults_db_outage tests it.
    return {"DATABASE_URL": "", "REDIS_URL": "", "DB_ANSWER_TIMEOUT_SECONDS": "30", **UNCAPPED, **extra}


def manage(tmp_path: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=server_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tagged_batch(request_id: str, size: int, **fields: object) -> list[dict]:
    """`size` latency points of one request, each tagged with its own id."""
    return [
        {
            "service": "crashsvc",
            "metric_type": "latency",
            "value": float(i),
            "tags": {"req": request_id, "pid": f"{request_id}-{i}"},
            **fields,
        }
        for i in range(size)
    ]


def stored_ids(db_path: Path) -> Counter:
    """How many times each point id (tags.pid) is stored."""
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT json_extract(tags, '$.pid') FROM metrics_point").fetchall()
    return Counter(r[0] for r in rows if r[0] is not None)


def sqlite_integrity(db_path: Path) -> str:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --- private Redis --------------------------------------------------------------


class OwnRedis:
    """A throwaway redis-server on a free port (no persistence)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, what=f"redis on {self.port}")
        return self

    def _answers(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --- private PostgreSQL cluster -------------------------------------------------


def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class OwnPostgres:
    """A PostgreSQL cluster in a temp dir on a free port, run as a non-root user when we are root."""

    def __init__(self, port: int | None = None) -> None:
        self.bindir = postgres_bindir()
        self.port = port or free_port()
        # Not under pytest's tmp_path: that is private to root, and initdb refuses root.
        self.base = Path(tempfile.mkdtemp(prefix="telemetry-pg-"))
        self.datadir = self.base / "pgdata"
        self.logfile = self.base / "pg.log"
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/telemetry"

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = list(cmd)
        if self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=check)

    def tool(self, name: str) -> str:
        assert self.bindir is not None, "PostgreSQL binaries not found"
        return str(self.bindir / name)

    def init(self) -> OwnPostgres:
        if self.user:
            shutil.chown(self.base, self.user, self.user)
            os.chmod(self.base, 0o700)
        self._run(self.tool("initdb"), "-D", str(self.datadir), "-U", "postgres", "-A", "trust", "--no-sync")
        self.start()
        self._run(self.tool("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "telemetry")
        return self

    def start(self) -> None:
        self._run(
            self.tool("pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-o",
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off",
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(self.tool("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def post(url: str, points: list[dict], timeout: float = 10.0) -> httpx.Response:
    return httpx.post(url + "/metrics/ingest", json=points, timeout=timeout)
