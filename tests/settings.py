"""Test settings: the production module with test-friendly defaults.

Environment defaults are set before importing it so the same module (and its
loud validation) is what runs; DATABASE_URL/REDIS_URL still select the
PostgreSQL + Redis run.

Ingest runs as in production: the group-commit writer on its own thread, reads
on pooled threads (DB_THREAD_POOL, on). While a test runs inside its own
transaction, tests/conftest.py lends those threads the test's connection. The
SQLite run's test database is a real file (tests/conftest.py), as a server's is.
"""

import os

os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("TELEMETRY_SCHEDULER", "0")

from telemetry_project.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# A loaded test machine is not a dead database: an ingest waits this long for the
# writer before answering 503, unless the test sets a timeout of its own.
if "DB_ANSWER_TIMEOUT_SECONDS" not in os.environ:
    TELEMETRY["DB_ANSWER_TIMEOUT_SECONDS"] = 60.0  # noqa: F405

# PostgreSQL run: a test database of this run's own, so concurrent runs on one
# server (several developers, or the suite beside a benchmark) never collide
# on pytest-django's default "test_<name>" when it is created or dropped.
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":  # noqa: F405
    DATABASES["default"].setdefault("TEST", {})["NAME"] = f"test_telemetry_{os.getpid()}"  # noqa: F405
