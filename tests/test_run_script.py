"""`make run` (scripts/run.py): loopback only and a readable terminal by default.

The live test starts the real script (daphne + the demo generator) on a free
port and a throwaway SQLite file, waits until the generator's points have
arrived, stops it with SIGTERM and reads what the terminal showed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.live import ROOT, free_port, migrate, server_env

_spec = importlib.util.spec_from_file_location("run_script", ROOT / "scripts" / "run.py")
assert _spec and _spec.loader
run_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_script)


def test_the_demo_server_binds_loopback_unless_host_says_otherwise():
    assert run_script.daphne_command({})[3:5] == ["-b", "127.0.0.1"]
    assert run_script.daphne_command({"HOST": ""})[3:5] == ["-b", "127.0.0.1"]
    assert run_script.daphne_command({"HOST": "0.0.0.0", "PORT": "9000"})[3:7] == ["-b", "0.0.0.0", "-p", "9000"]


def test_the_access_log_is_off_by_default_and_on_with_access_log_1():
    quiet = run_script.daphne_command({})
    assert "--access-log" not in quiet and quiet[quiet.index("-v") + 1] == "0"
    loud = run_script.daphne_command({"ACCESS_LOG": "1"})
    assert loud[loud.index("--access-log") + 1] == "-" and "-v" not in loud
    with pytest.raises(SystemExit, match="ACCESS_LOG"):
        run_script.daphne_command({"ACCESS_LOG": "loud"})


def test_the_startup_message_says_how_to_expose_the_server_and_see_requests():
    message = run_script.startup_message({"PORT": "8123"})
    assert "http://localhost:8123/" in message and "HOST=0.0.0.0" in message and "ACCESS_LOG=1" in message


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel writes them) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.live
@pytest.mark.slow
def test_make_run_listens_on_loopback_and_keeps_the_terminal_quiet(tmp_path):
    port = free_port()
    env = server_env(tmp_path, PORT=str(port), TELEMETRY_SCHEDULER="0")
    for name in ("HOST", "ACCESS_LOG", "DEMO"):
        env.pop(name, None)
    migrate(env)
    out = (tmp_path / "terminal.txt").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "scripts/run.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
    )
    try:
        # Generous: on a loaded machine or PostgreSQL the seven-day history fill
        # before the first demo point can take minutes; this waits for the
        # condition, not for a duration.
        deadline = time.monotonic() + 300
        services: list = []
        while time.monotonic() < deadline and len(services) < 5 and proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                services = httpx.get(f"http://127.0.0.1:{port}/metrics/services", timeout=2).json()["services"]
            time.sleep(0.2)
        if len(services) < 5:
            out.seek(0)
            pytest.fail(f"the demo generator's services never arrived; terminal:\n{out.read()[-3000:]}")
        assert listening_addresses(port) <= {"0100007F"}, listening_addresses(port)
        assert listening_addresses(port)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    out.seek(0)
    terminal = out.read()
    assert "Telemetry on http://localhost:" in terminal
    assert "/metrics/ingest" not in terminal and '"POST' not in terminal and "HTTP/1.1" not in terminal, terminal[
        -2000:
    ]


def test_the_container_deployment_still_listens_on_every_interface():
    # make run's loopback default must not leak into the images: nginx reaches daphne over the compose network.
    assert '"daphne", "-b", "0.0.0.0"' in (ROOT / "Dockerfile").read_text()
    assert (ROOT / "docker-compose.yml").read_text().count('"daphne", "-b", "0.0.0.0"') >= 1
