"""`make run`: serve the ASGI app with daphne and feed it with the demo generator.

On an empty database it first fills demo history (DEMO_HISTORY_HOURS, default
7 days, one sample every DEMO_HISTORY_STEP = 60 s) so every time range shows
something. Ctrl-C (or SIGTERM) stops both; if either exits, the other is
stopped too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wait_healthy(url: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/metrics/health", timeout=2):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def fill_history(env: dict[str, str]) -> bool:
    """First start only (--if-empty): history in process, before the server and live stream start.

    Before, not alongside: alerts are evaluated in point order, and live points
    interleaved with hours-old ones would resolve history's alerts at live times.
    Returns False when Ctrl-C/SIGTERM stopped it (the generator finishes its batch).
    """
    hours = env.get("DEMO_HISTORY_HOURS", "168")
    if env.get("DEMO", "1") == "0" or float(hours) <= 0:
        return True
    step = env.get("DEMO_HISTORY_STEP", "60")
    command = ["manage.py", "generate_metrics", "--backfill", hours, "--step", step, "--if-empty", "--no-stream"]
    interrupted = []
    child = subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env)

    def stop(signum: int, frame: object) -> None:
        interrupted.append(signum)
        child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return not interrupted


def access_log_on(environ: Mapping[str, str]) -> bool:
    raw = environ.get("ACCESS_LOG", "0").strip().lower()
    if raw not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        raise SystemExit(f"ACCESS_LOG={raw!r} is not a boolean (use 1 or 0)")
    return raw in ("1", "true", "yes", "on")


def daphne_command(environ: Mapping[str, str]) -> list[str]:
    """The server's command line.

    Loopback only by default: the demo runs with DEBUG on and API keys off, so
    it must not be reachable from the network unless asked (HOST=0.0.0.0).
    No access log by default: the generator's requests (several a second)
    would scroll the startup message away; ACCESS_LOG=1 prints one line each.
    """
    host = environ.get("HOST") or "127.0.0.1"
    port = environ.get("PORT") or "8000"
    logging = ["--access-log", "-"] if access_log_on(environ) else ["-v", "0"]
    return [sys.executable, "-m", "daphne", "-b", host, "-p", port, *logging, "telemetry_project.asgi:application"]


def startup_message(environ: Mapping[str, str]) -> str:
    port = environ.get("PORT") or "8000"
    host = environ.get("HOST") or "127.0.0.1"
    reach = (
        "this machine only; HOST=0.0.0.0 listens on every interface"
        if host in ("127.0.0.1", "localhost", "::1")
        else f"listening on {host}"
    )
    log = "access log on" if access_log_on(environ) else "ACCESS_LOG=1 shows every request"
    return f"Telemetry on http://localhost:{port}/ ({reach}; {log}).\nCtrl-C stops the server and the generator."


def main() -> int:
    port = os.environ.get("PORT") or "8000"
    host = os.environ.get("HOST") or "127.0.0.1"
    env = dict(os.environ)
    env.setdefault("DEBUG", "1")
    # The health probe and the generator use loopback unless the server is bound to one address only.
    probe = "127.0.0.1" if host in ("0.0.0.0", "::", "localhost") else (f"[{host}]" if ":" in host else host)
    url = f"http://{probe}:{port}"
    if not fill_history(env):
        return 0
    server = subprocess.Popen(daphne_command(env), cwd=ROOT, env=env)
    children = [server]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if wait_healthy(url):
        print(startup_message(env), flush=True)
        if env.get("DEMO", "1") != "0":
            children.append(
                subprocess.Popen([sys.executable, "manage.py", "generate_metrics", "--url", url], cwd=ROOT, env=env)
            )
    while not stopping and all(c.poll() is None for c in children):
        time.sleep(0.2)
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
