"""Test settings: the production module with test-friendly defaults.

Environment defaults are set before importing it so the same module (and its
loud validation) is what runs; DATABASE_URL/REDIS_URL still select the
PostgreSQL + Redis run.

Ingest runs as in production: the group-commit writer on its own thread, reads
on pooled threads (DB_THREAD_POOL, on). While a test runs inside its own
transaction, tests/conftest.py lends those threads the test's connection. The
SQLite run is on a real file, as a server's is (WAL, a connection per thread,
one write lock with a busy timeout), not on an in-memory database.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("TELEMETRY_SCHEDULER", "0")

from telemetry_project.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# A loaded test machine is not a dead database: an ingest waits this long for the
# writer before answering 503, unless the test sets a timeout of its own.
if "DB_ANSWER_TIMEOUT_SECONDS" not in os.environ:
    TELEMETRY["DB_ANSWER_TIMEOUT_SECONDS"] = 60.0  # noqa: F405

# SQLite run: this process's own test file (several runs may share a machine),
# removed with its WAL files at exit; TELEMETRY_TEST_SQLITE names another.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" and not DATABASES["default"]["TEST"]["NAME"]:  # noqa: F405
    _test_dir = tempfile.mkdtemp(prefix="telemetry-test-")
    atexit.register(shutil.rmtree, _test_dir, ignore_errors=True)
    DATABASES["default"]["TEST"]["NAME"] = os.path.join(_test_dir, "test.sqlite3")  # noqa: F405

# PostgreSQL run: a test database of this run's own, so concurrent runs on one
# server (several developers, or the suite beside a benchmark) never collide
# on pytest-django's default "test_<name>" when it is created or dropped.
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":  # noqa: F405
    DATABASES["default"].setdefault("TEST", {})["NAME"] = f"test_telemetry_{os.getpid()}"  # noqa: F405
