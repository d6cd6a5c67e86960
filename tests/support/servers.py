"""A live daphne for one test or one module, on a database no other server or test touches.

    with own_server(tmp_path, "telemetry_otlp", REQUIRE_API_KEY="0") as server:
        httpx.post(server.url + "/metrics/ingest", json=...)

A fresh SQLite file under `tmp_path`, or, in the PostgreSQL run (DATABASE_URL
in the environment) when `database` names one, a dedicated PostgreSQL database
created and migrated for this server and dropped afterwards (tests/pgtools.py).
Pass DATABASE_URL="" to keep SQLite in both runs. Other settings are
environment variables for the server (tests/live.py). A module-scoped server
is a module fixture around it, with tmp_path_factory.mktemp(...) for the path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from tests import pgtools
from tests.live import LiveServer


@contextlib.contextmanager
def own_server(tmp_path: Path, database: str | None = None, **env: str) -> Iterator[LiveServer]:
    """A started server on a database of its own; stopped (and its PostgreSQL database dropped) on exit."""
    if database and os.environ.get("DATABASE_URL") and "DATABASE_URL" not in env:
        with (
            pgtools.dedicated_database(database) as url,
            LiveServer(tmp_path, migrate_first=False, env={**env, "DATABASE_URL": url}) as server,
        ):
            yield server
    else:
        with LiveServer(tmp_path, env=env) as server:
            yield server
