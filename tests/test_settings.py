"""Settings helpers fail loudly on malformed environment values."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from telemetry_project import settings as project_settings
from telemetry_project.settings import envbool, envchoice, envfloat, envint, envlist, threshold_overrides
from tests.live import ROOT


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
        ("", False),
    ],
)
def test_envbool_reads_the_usual_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv("X_FLAG", raw)
    assert envbool("X_FLAG", not expected) is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "yes please", "tru"])
def test_envbool_fails_loudly_on_anything_else(monkeypatch, raw):
    monkeypatch.setenv("X_FLAG", raw)
    with pytest.raises(ImproperlyConfigured, match="X_FLAG"):
        envbool("X_FLAG", False)


def test_env_helpers_use_the_default_when_unset(monkeypatch):
    monkeypatch.delenv("X_UNSET", raising=False)
    assert envbool("X_UNSET", True) is True
    assert envint("X_UNSET", 7) == 7
    assert envfloat("X_UNSET", 1.5) == 1.5
    assert envlist("X_UNSET", ["a"]) == ["a"]


def test_envint_parses_and_checks_the_minimum(monkeypatch):
    monkeypatch.setenv("X_INT", "42")
    assert envint("X_INT", 1) == 42
    monkeypatch.setenv("X_INT", "0")
    with pytest.raises(ImproperlyConfigured, match=">= 1"):
        envint("X_INT", 5, minimum=1)


@pytest.mark.parametrize("raw", ["abc", "1.5", "10k", "0x10"])
def test_envint_fails_loudly_on_non_integers(monkeypatch, raw):
    monkeypatch.setenv("X_INT", raw)
    with pytest.raises(ImproperlyConfigured, match="X_INT"):
        envint("X_INT", 1)


@pytest.mark.parametrize("raw", ["abc", "nan", "inf"])
def test_envfloat_fails_loudly_on_non_finite_or_garbage(monkeypatch, raw):
    monkeypatch.setenv("X_FLOAT", raw)
    with pytest.raises(ImproperlyConfigured, match="X_FLOAT"):
        envfloat("X_FLOAT", 1.0)


def test_envchoice_accepts_known_values_only(monkeypatch):
    monkeypatch.setenv("X_CHOICE", "normal")
    assert envchoice("X_CHOICE", "FULL", {"NORMAL", "FULL"}) == "NORMAL"
    monkeypatch.setenv("X_CHOICE", "fast")
    with pytest.raises(ImproperlyConfigured):
        envchoice("X_CHOICE", "FULL", {"NORMAL", "FULL"})


def test_envlist_splits_on_commas_and_drops_blanks(monkeypatch):
    monkeypatch.setenv("X_LIST", " a.example , ,b.example,")
    assert envlist("X_LIST", []) == ["a.example", "b.example"]


def test_threshold_overrides_read_known_names():
    environ = {"THRESHOLD_LATENCY_WARNING": "300", "THRESHOLD_ERROR_RATE_CRITICAL": "0.2", "OTHER": "x"}
    assert threshold_overrides(environ) == {"latency_warning": 300.0, "error_rate_critical": 0.2}


@pytest.mark.parametrize(
    "environ",
    [
        {"THRESHOLD_LATENCY_WARNIGN": "300"},
        {"THRESHOLD_DISK_WARNING": "1"},
        {"THRESHOLD_LATENCY_WARNING": "fast"},
        {"THRESHOLD_LATENCY_WARNING": ""},
        {"THRESHOLD_CPU_CRITICAL": "nan"},
    ],
)
def test_threshold_overrides_fail_loudly_on_typos_and_bad_numbers(environ):
    with pytest.raises(ImproperlyConfigured, match="THRESHOLD_"):
        threshold_overrides(environ)


def test_sqlite_is_opened_in_wal_with_immediate_transactions():
    options = project_settings._sqlite_database("/tmp/x.sqlite3")["OPTIONS"]
    assert options["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in options["init_command"]
    assert "synchronous=NORMAL" in options["init_command"]
    assert options["timeout"] >= 5


def child_env(tmp_path, **overrides: str) -> dict[str, str]:
    """The environment of a fresh process reading the real settings module, on a throwaway SQLite file."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    # TELEMETRY_ENV_FILE="": the checkout's own .env.local (make install) stays out of it.
    env.update({"DEBUG": "1", "TELEMETRY_DATA_DIR": str(tmp_path), "DATABASE_URL": "", "TELEMETRY_ENV_FILE": ""})
    env.pop("TELEMETRY_ALLOW_INSECURE_KEY", None)
    env.update(overrides)
    return env


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "perhaps"}, "DEBUG"),
        ({"RAW_RETENTION_HOURS": "a day"}, "RAW_RETENTION_HOURS"),
        ({"RAW_RETENTION_HOURS": "0"}, "must be greater than 0"),
        ({"GIL_SWITCH_INTERVAL_MS": "0"}, "GIL_SWITCH_INTERVAL_MS"),
        ({"DEBUG": "0", "SECRET_KEY": ""}, "SECRET_KEY"),
        ({"THRESHOLD_LATENCY_WARNIGN": "3"}, "THRESHOLD_LATENCY_WARNIGN"),
    ],
    ids=["bad-bool", "bad-int", "zero-retention", "zero-switch-interval", "no-secret-key", "threshold-typo"],
)
def test_the_process_refuses_to_start_with_a_bad_value(tmp_path, env, message):
    full = child_env(tmp_path, **env)
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=full, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr


def test_the_asgi_process_takes_its_gil_switch_interval_from_the_environment(tmp_path):
    env = child_env(tmp_path, TELEMETRY_SCHEDULER="0", GIL_SWITCH_INTERVAL_MS="2.5")
    code = "import sys, telemetry_project.asgi; print(sys.getswitchinterval())"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == pytest.approx(0.0025)


# --- The checkout's local settings file (make install writes .env.local) -----------


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def local_env(tmp_path):
    """A .env.local written by the Makefile rule itself, and an environment that sets neither DEBUG nor SECRET_KEY."""
    path = tmp_path / "env.local"
    result = subprocess.run(
        ["make", "--no-print-directory", str(path), f"LOCAL_ENV={path}", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    env = child_env(tmp_path, TELEMETRY_ENV_FILE=str(path))
    for name in ("DEBUG", "SECRET_KEY"):
        env.pop(name, None)
    return path, env


def test_make_install_writes_debug_and_a_generated_key_once(local_env):
    path, _ = local_env
    text = path.read_text()
    assert "DEBUG=1" in text.splitlines()
    key = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("SECRET_KEY="))
    assert len(key) >= 50 and "insecure" not in key
    assert path.stat().st_mode & 0o077 == 0
    rerun = subprocess.run(
        ["make", "--no-print-directory", str(path), f"LOCAL_ENV={path}", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rerun.returncode == 0 and path.read_text() == text


def test_the_readmes_manage_py_commands_work_with_only_the_local_file(local_env):
    _, env = local_env
    for args in (
        ("migrate", "--noinput", "-v0"),
        ("createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com"),
        ("prune", "--dry-run"),
        ("generate_metrics", "--duration", "1", "--rate", "1", "--services", "api"),
        ("check",),
    ):
        result = manage({**env, "DJANGO_SUPERUSER_PASSWORD": "local-admin-pw-1"}, *args)
        assert result.returncode == 0, f"manage.py {' '.join(args)}: {result.stderr[-1500:]}"


def test_the_environment_wins_over_the_local_file(local_env):
    _, env = local_env
    code = "from django.conf import settings; import django; django.setup(); print(settings.DEBUG, settings.SECRET_KEY)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "DEBUG": "0", "SECRET_KEY": "s" * 60, "DJANGO_SETTINGS_MODULE": "telemetry_project.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "s" * 60]


def test_production_without_the_file_still_fails_loudly(tmp_path):
    env = child_env(tmp_path, TELEMETRY_ENV_FILE=str(tmp_path / "missing.env"))
    for name in ("DEBUG", "SECRET_KEY"):
        env.pop(name, None)
    result = manage(env, "check")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "SECRET_KEY must be set" in result.stderr


def test_the_local_file_is_ignored_by_git_and_docker():
    result = subprocess.run(["git", "check-ignore", "-q", ".env.local"], cwd=ROOT, timeout=30)
    assert result.returncode == 0
    assert ".env.local" in (ROOT / ".dockerignore").read_text().split()
