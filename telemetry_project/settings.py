"""One settings module, driven by environment variables.

Every helper fails loudly on a malformed value: a typo in production must stop
the process at start, not run it with a silently different configuration.
The defaults run on a bare machine: SQLite in WAL mode and the in-memory
channel layer.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from corsheaders.defaults import default_headers
from django.core.exceptions import ImproperlyConfigured

from metrics.kinds import METRIC_TYPES

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def envbool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def envint(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be >= {minimum}")
    return value


def envfloat(name: str, default: float, positive: bool = False) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ImproperlyConfigured(f"{name}={raw!r} must be finite")
    if positive and value <= 0:
        raise ImproperlyConfigured(f"{name}={raw!r} must be greater than 0")
    return value


def envlist(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def envchoice(name: str, default: str, choices: set[str]) -> str:
    value = os.environ.get(name, default).strip().upper()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} must be one of {sorted(choices)}")
    return value


def threshold_overrides(environ: dict[str, str] | os._Environ) -> dict[str, float]:
    """THRESHOLD_<METRIC>_<WARNING|CRITICAL>=number -> {"<metric>_<level>": number}; typos fail loudly."""
    allowed = {f"{m}_{level}" for m in METRIC_TYPES for level in ("warning", "critical")}
    out: dict[str, float] = {}
    for key in environ:
        if not key.startswith("THRESHOLD_"):
            continue
        name = key[len("THRESHOLD_") :].lower()
        if name not in allowed:
            raise ImproperlyConfigured(f"{key} is not a known threshold; use THRESHOLD_<METRIC>_<WARNING|CRITICAL>")
        raw = environ[key]
        if raw.strip() == "":
            raise ImproperlyConfigured(f"{key} is empty")
        try:
            value = float(raw)
        except ValueError:
            raise ImproperlyConfigured(f"{key}={raw!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ImproperlyConfigured(f"{key}={raw!r} must be finite")
        out[name] = value
    return out


def envjson(name: str, default: dict) -> dict:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ImproperlyConfigured(f"{name} must be a JSON object")
    return value


# --- Local development file ------------------------------------------------------
# `make install` writes .env.local once (DEBUG=1 and a generated SECRET_KEY; git-
# and docker-ignored), so every manage.py command works in a checkout without
# extra variables. It only fills in variables the environment does not set. A
# production host has no such file: DEBUG is off there and a missing SECRET_KEY
# still stops the process. TELEMETRY_ENV_FILE names another file ("" for none).
_env_file = os.environ.get("TELEMETRY_ENV_FILE")
LOCAL_ENV_FILE = BASE_DIR / ".env.local" if _env_file is None else (Path(_env_file) if _env_file else None)
if LOCAL_ENV_FILE is not None and LOCAL_ENV_FILE.is_file():
    from dotenv import load_dotenv

    load_dotenv(LOCAL_ENV_FILE, override=False)

DEBUG = envbool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG and not envbool("TELEMETRY_ALLOW_INSECURE_KEY", False):
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (in a development checkout, `make install` writes .env.local)"
        )
    SECRET_KEY = "insecure-development-key-do-not-use-in-production-0123456789"

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    # daphne first so `runserver` serves the ASGI application (WebSockets included).
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "corsheaders",
    "channels",
    "metrics",
    "dashboard",
]

MIDDLEWARE = [
    # First, so the request latencies in /metrics/prometheus include every layer.
    "metrics.api.timing.RequestTimingMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out login into its lockout answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "telemetry_project.urls"
ASGI_APPLICATION = "telemetry_project.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "dashboard.context_processors.metric_kinds",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------
DATA_DIR = Path(os.environ.get("TELEMETRY_DATA_DIR", BASE_DIR / "data"))
SQLITE_SYNCHRONOUS = envchoice("SQLITE_SYNCHRONOUS", "NORMAL", {"OFF", "NORMAL", "FULL", "EXTRA"})
# Memory-mapped reads of the database file, per connection (0 turns them off).
SQLITE_MMAP_MB = envint("SQLITE_MMAP_MB", 256, 0)
DATABASE_URL = os.environ.get("DATABASE_URL", "")


def _sqlite_database(path: str | Path) -> dict:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            # IMMEDIATE takes the write lock at BEGIN, so concurrent writers queue
            # on the busy timeout instead of failing with "database is locked"
            # when a read transaction tries to upgrade.
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": (
                "PRAGMA journal_mode=WAL;"
                f"PRAGMA synchronous={SQLITE_SYNCHRONOUS};"
                "PRAGMA busy_timeout=20000;"
                "PRAGMA temp_store=MEMORY;"
                "PRAGMA cache_size=-65536;"
                f"PRAGMA mmap_size={SQLITE_MMAP_MB * 1024 * 1024};"
            ),
        },
        "CONN_MAX_AGE": None,
        "TEST": {"NAME": os.environ.get("TELEMETRY_TEST_SQLITE") or None},
    }


if DATABASE_URL:
    import dj_database_url

    try:
        _db: dict[str, Any] = dict(dj_database_url.parse(DATABASE_URL, conn_max_age=600, conn_health_checks=True))
    except Exception as exc:  # the library raises several types for bad URLs
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
    if _db["ENGINE"] == "django.db.backends.sqlite3":
        _db = _sqlite_database(_db["NAME"])
    elif _db["ENGINE"] == "django.db.backends.postgresql":
        _db.setdefault("OPTIONS", {})
        # A dead database must answer 503 quickly, never hang a request.
        _db["OPTIONS"].setdefault("connect_timeout", envint("DATABASE_CONNECT_TIMEOUT", 3, 1))
    DATABASES = {"default": _db}
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {"default": _sqlite_database(DATA_DIR / "telemetry.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer ------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    # The pub/sub layer publishes a group message once per server process (each
    # process holds one subscription and fans out locally), where the core layer
    # writes one Redis list entry per connected consumer. For broadcast to many
    # WebSocket clients that is the difference between O(processes) and
    # O(clients) Redis work per point batch.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            # Deployments (or test servers) sharing one Redis keep apart by prefix.
            "CONFIG": {"hosts": [REDIS_URL], "prefix": os.environ.get("CHANNEL_LAYER_PREFIX", "asgi")},
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": envint("CHANNEL_CAPACITY", 1000, 10), "expiry": 60},
        }
    }

# --- Auth, i18n, static -------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Login throttling (django-axes) for the admin, the dashboard login and basic-auth
# scrapes: after LOGIN_FAILURE_LIMIT wrong passwords for one username from one
# IP address, that pair is locked out for LOGIN_LOCKOUT_MINUTES (reset on success).
AUTHENTICATION_BACKENDS = ["metrics.api.auth.LoginThrottleBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 5, 1)
AXES_COOLOFF_TIME = timedelta(minutes=envint("LOGIN_LOCKOUT_MINUTES", 15, 1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "metrics.api.auth.lockout_response"
AXES_DISABLE_ACCESS_LOG = True  # failures are what throttling needs; no table row per successful login
AXES_VERBOSE = False  # no start-up banner on every manage.py command and server start

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))

# --- Security -----------------------------------------------------------------
CORS_ALLOWED_ORIGINS = envlist("CORS_ORIGINS", [])
CORS_ALLOW_CREDENTIALS = False
# Browser clients send their ingest key in X-API-Key or Authorization.
CORS_ALLOW_HEADERS = (*default_headers, "x-api-key")
CORS_URLS_REGEX = r"^/(metrics|v1)/.*$"
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])
CSRF_FAILURE_VIEW = "metrics.api.errors.csrf_failure"
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if not DEBUG:
    SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = envbool("SECURE_COOKIES", True)
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
    # Container health checks call the app directly over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^metrics/health$"]
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Telemetry's own knobs ----------------------------------------------------
DATA_UPLOAD_MAX_MEMORY_SIZE = envint("INGEST_MAX_BODY_BYTES", 5 * 1024 * 1024, 1024)
TELEMETRY: dict[str, Any] = {
    "INGEST_MAX_POINTS": envint("INGEST_MAX_POINTS", 10_000, 1),
    "INGEST_MAX_BODY_BYTES": DATA_UPLOAD_MAX_MEMORY_SIZE,
    "MAX_TAGS": envint("INGEST_MAX_TAGS", 16, 0),
    "MAX_TAG_KEY_LENGTH": envint("INGEST_MAX_TAG_KEY_LENGTH", 64, 1),
    "MAX_TAG_VALUE_LENGTH": envint("INGEST_MAX_TAG_VALUE_LENGTH", 256, 1),
    "MAX_FUTURE_SECONDS": envint("INGEST_MAX_FUTURE_SECONDS", 300, 0),
    # Fractions allowed (0.05 = 3 minutes): the soak reaches its steady state within a run.
    "RAW_RETENTION_HOURS": envfloat("RAW_RETENTION_HOURS", 24, positive=True),
    "ROLLUP_RETENTION_DAYS": envint("ROLLUP_RETENTION_DAYS", 7, 1),
    "ALERT_RETENTION_DAYS": envint("ALERT_RETENTION_DAYS", 7, 1),
    "QUERY_RAW_MAX_SECONDS": envint("QUERY_RAW_MAX_SECONDS", 3600, 0),
    "QUERY_DEFAULT_LIMIT": envint("QUERY_DEFAULT_LIMIT", 10_000, 1),
    "SERVICE_WINDOW_SECONDS": envint("SERVICE_WINDOW_SECONDS", 300, 10),
    "ALERT_RESOLVE_POINTS": envint("ALERT_RESOLVE_POINTS", 3, 1),
    "ALERT_RESOLVE_SECONDS": envint("ALERT_RESOLVE_SECONDS", 30, 0),
    # Periodic maintenance inside the server process: roll up completed minutes
    # every ROLLUP_INTERVAL seconds, prune every PRUNE_INTERVAL seconds.
    "SCHEDULER_ENABLED": envbool("TELEMETRY_SCHEDULER", True),
    "ROLLUP_INTERVAL_SECONDS": envint("ROLLUP_INTERVAL_SECONDS", 15, 1),
    "PRUNE_INTERVAL_SECONDS": envint("PRUNE_INTERVAL_SECONDS", 600, 1),
    # Rows per retention delete batch, each its own short transaction; on SQLite
    # the write lock is left free between batches until a waiting ingest can take it.
    "PRUNE_BATCH_ROWS": envint("PRUNE_BATCH_ROWS", 1000, 1),
    "REQUIRE_API_KEY": envbool("REQUIRE_API_KEY", not DEBUG),
    "DASHBOARD_REQUIRE_LOGIN": envbool("DASHBOARD_REQUIRE_LOGIN", False),
    "MAX_SERIES_PER_SERVICE": envint("MAX_SERIES_PER_SERVICE", 1000, 1),
    "MAX_SERVICES": envint("MAX_SERVICES", 500, 1),
    # Ingest writes go to one group-commit writer thread (metrics.ingest.writer) and
    # query reads to reused worker threads, each keeping its connection, instead
    # of Django's new thread (and new connection) per request. The test suite
    # runs them too (tests/conftest.py lends them the test's connection); off,
    # both run on the request's own thread.
    "DB_THREAD_POOL": envbool("DB_THREAD_POOL", True),
    # Ingest and health answer 503 (Retry-After) when the database has not answered
    # within this many seconds; the abandoned request is rolled back (docs/reliability.md).
    "DB_ANSWER_TIMEOUT_SECONDS": envfloat("DB_ANSWER_TIMEOUT_SECONDS", 5.0),
    # /metrics/health reuses its last database and channel-layer checks this long;
    # concurrent polls share one run (0 checks on every request).
    "HEALTH_CACHE_SECONDS": envfloat("HEALTH_CACHE_SECONDS", 2.0),
    # The serving process's GIL switch interval (sys.setswitchinterval), see telemetry_project/asgi.py.
    "GIL_SWITCH_INTERVAL_MS": envfloat("GIL_SWITCH_INTERVAL_MS", 1.0, positive=True),
    # Threshold overrides for the default (all-services) alert rules, e.g.
    # THRESHOLD_LATENCY_WARNING=300. They win over the default rows seeded in the
    # database; per-service rules edited in the admin win over both.
    "THRESHOLD_OVERRIDES": threshold_overrides(os.environ),
    # OTLP metric name -> {"metric_type": ..., "unit": ..., "scale": ...}, merged over the
    # defaults in metrics/ingest/otlp.py (docs/send-metrics.md has the table).
    "OTLP_METRIC_MAP": envjson("OTLP_METRIC_MAP", {}),
    # A histogram data point with more buckets is rejected (partial_success).
    "OTLP_MAX_HISTOGRAM_BUCKETS": envint("OTLP_MAX_HISTOGRAM_BUCKETS", 256, 1),
    # Memory for cumulative-to-delta state; least recently used series are forgotten beyond it.
    "OTLP_CUMULATIVE_STATE_BYTES": envint("OTLP_CUMULATIVE_STATE_BYTES", 64 * 1024 * 1024, 0),
    # /ws/metrics (docs/streaming.md): coalescing interval, per-connection queue,
    # stalled-reader timeout, inbound message size and rate limits.
    "WS_FLUSH_INTERVAL_MS": envint("WS_FLUSH_INTERVAL_MS", 50, 0),
    "WS_QUEUE_POINTS": envint("WS_QUEUE_POINTS", 5000, 1),
    "WS_STALL_TIMEOUT_SECONDS": envfloat("WS_STALL_TIMEOUT_SECONDS", 10.0),
    "WS_MAX_MESSAGE_BYTES": envint("WS_MAX_MESSAGE_BYTES", 64 * 1024, 256),
    "WS_MAX_MESSAGES_PER_SECOND": envint("WS_MAX_MESSAGES_PER_SECOND", 50, 1),
    "VERSION": "0.1.0",
}


# --- Notifications (metrics/alerts, docs/alerts.md) ---------------------------
def notify_urls(name: str) -> list[str]:
    """NOTIFY_URLS: whitespace-separated contact point URLs (Apprise or alertmanager+http(s)://)."""
    urls = os.environ.get(name, "").split()
    for url in urls:
        scheme, sep, rest = url.partition("://")
        if not sep or not rest or not scheme.replace("+", "").replace("-", "").isalnum():
            raise ImproperlyConfigured(f"{name}: {url[:80]!r} is not a URL such as alertmanager+https://host/hook")
    return urls


TELEMETRY.update(
    {
        "NOTIFY_URLS": notify_urls("NOTIFY_URLS"),
        "NOTIFY_SECRET": os.environ.get("NOTIFY_SECRET", ""),
        "NOTIFY_EXTERNAL_URL": os.environ.get("NOTIFY_EXTERNAL_URL", "http://localhost:8000").rstrip("/"),
        "NOTIFY_GROUP_WAIT_SECONDS": envfloat("NOTIFY_GROUP_WAIT_SECONDS", 30.0),
        "NOTIFY_REPEAT_INTERVAL_SECONDS": envfloat("NOTIFY_REPEAT_INTERVAL_SECONDS", 3600.0),
        "NOTIFY_RETRY_BASE_SECONDS": envfloat("NOTIFY_RETRY_BASE_SECONDS", 5.0, positive=True),
        "NOTIFY_RETRY_MAX_SECONDS": envfloat("NOTIFY_RETRY_MAX_SECONDS", 600.0, positive=True),
        "NOTIFY_MAX_ATTEMPTS": envint("NOTIFY_MAX_ATTEMPTS", 50, 1),
        "NOTIFY_TIMEOUT_SECONDS": envfloat("NOTIFY_TIMEOUT_SECONDS", 5.0, positive=True),
    }
)
# --- Pages: the dashboard's login, error reports, CSP --------------------------
# The dashboard's own login page takes any active user (viewers included); the
# admin keeps its staff-only login, and alert actions check is_staff.
LOGIN_URL = "dashboard:login"
LOGIN_REDIRECT_URL = "dashboard:overview"
LOGOUT_REDIRECT_URL = "dashboard:overview"
# The DEBUG 500 page and error reports hide DATABASE_URL/REDIS_URL and mask
# the password of every connection URL they show.
DEFAULT_EXCEPTION_REPORTER_FILTER = "telemetry_project.reporting.ConnectionSafeExceptionReporterFilter"

# Content-Security-Policy (django-csp) on every response: the pages load only
# their own static files, with no inline script or style (htmx's indicator
# style is turned off in templates/base.html); data: is the empty favicon.
# 'self' covers the same-origin /ws/metrics WebSocket. django-csp leaves
# Django's own DEBUG 404/500 pages out, which need their inline styles.
MIDDLEWARE = [*MIDDLEWARE, "csp.middleware.CSPMiddleware"]
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
    },
}
