"""PostgreSQL and Redis for the scale-out tests: reachability and throwaway databases.

A test that needs several real server processes sharing one database creates
its own (`dedicated_database("telemetry_multi")`), migrates it, and drops it
afterwards, so it never touches pytest-django's test database or another
test module's data.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

from tests.live import ROOT

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def scale_out_available() -> bool:
    return reachable(PG_URL, 5432) and reachable(REDIS_URL, 6379)


SKIP_REASON = f"needs PostgreSQL ({PG_URL}) and Redis ({REDIS_URL}); start them (see docs/deployment.md)"


def _admin_connect():  # type: ignore[no-untyped-def]
    import psycopg

    parsed = urlparse(PG_URL)
    return psycopg.connect(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password,
        dbname="postgres",
        autocommit=True,
        connect_timeout=5,
    )


def database_url(name: str) -> str:
    parsed = urlparse(PG_URL)
    return parsed._replace(path="/" + name).geturl()


@contextlib.contextmanager
def dedicated_database(prefix: str, migrate: bool = True) -> Iterator[str]:
    """Create a fresh database, migrate it, yield its URL, drop it afterwards."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with _admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = database_url(name)
    try:
        if migrate:
            env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
            env.update(DATABASE_URL=url, DEBUG="1")
            subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
        yield url
    finally:
        with _admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def count(url: str, sql: str, params: tuple = ()) -> int:
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0
