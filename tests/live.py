"""Real server processes for live tests: daphne on a free port, its own database.

    with LiveServer(tmp_path) as server:
        httpx.post(server.url + "/metrics/ingest", json=...)

Each server gets a fresh SQLite file under `tmp_path` (migrated before start)
unless DATABASE_URL is in the environment (the PostgreSQL + Redis run), in
which case it shares that database and channel layer like a real deployment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DEBUG", "1")
    env["TELEMETRY_DATA_DIR"] = str(tmp_path)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("DJANGO_SETTINGS_MODULE", None)
    # A live server takes production's defaults, whatever the calling shell set.
    env.pop("DB_THREAD_POOL", None)
    env.update(overrides)
    return env


def migrate(env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)


def create_superuser(env: dict[str, str], username: str, password: str, email: str) -> None:
    """A staff user in the database `env` points at, made the way the README says (manage.py createsuperuser)."""
    subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", username, "--email", email],
        cwd=ROOT,
        env={**env, "DJANGO_SUPERUSER_PASSWORD": password},
        check=True,
        capture_output=True,
    )


class LiveServer:
    def __init__(
        self,
        tmp_path: Path,
        port: int | None = None,
        migrate_first: bool = True,
        env: Mapping[str, str] | None = None,
        **overrides: str,
    ) -> None:
        self.tmp_path = tmp_path
        self.port = port or free_port()
        self.env = server_env(tmp_path, **{**(env or {}), **overrides})
        self.migrate_first = migrate_first
        self.proc: subprocess.Popen | None = None
        self.log_path = tmp_path / f"daphne-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/metrics"

    def start(self, timeout: float = 30.0) -> LiveServer:
        if self.migrate_first:
            migrate(self.env)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "telemetry_project.asgi:application",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                if httpx.get(self.url + "/metrics/health", timeout=1).status_code in (200, 503):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout}s: {self.log()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
