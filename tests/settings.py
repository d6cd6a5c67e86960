"""Test settings: the production module with test-friendly defaults.

Environment defaults are set before importing it so the same module (and its
loud validation) is what runs; DATABASE_URL/REDIS_URL still select the
PostgreSQL + Redis run.
"""

import os

os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("TELEMETRY_SCHEDULER", "0")
os.environ.setdefault("DB_THREAD_POOL", "0")

from telemetry_project.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# PostgreSQL run: a test database of this run's own, so concurrent runs on one
# server (several developers, or the suite beside a benchmark) never collide
# on pytest-django's default "test_<name>" when it is created or dropped.
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":  # noqa: F405
    DATABASES["default"].setdefault("TEST", {})["NAME"] = f"test_telemetry_{os.getpid()}"  # noqa: F405
