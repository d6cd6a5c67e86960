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
