"""Exit 0 when the PostgreSQL and Redis the scale-out suite uses are reachable."""

import os
import socket
import sys
from urllib.parse import urlparse


def reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=2):
            return True
    except OSError:
        return False


db = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
redis = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
sys.exit(0 if reachable(db, 5432) and reachable(redis, 6379) else 1)
