"""`make run`: serve the ASGI app with daphne and feed it with the demo generator.

Ctrl-C (or SIGTERM) stops both; if either exits, the other is stopped too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
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


def main() -> int:
    port = os.environ.get("PORT", "8000")
    host = os.environ.get("HOST", "0.0.0.0")
    env = dict(os.environ)
    env.setdefault("DEBUG", "1")
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", host, "-p", port, "telemetry_project.asgi:application"],
        cwd=ROOT,
        env=env,
    )
    children = [server]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if wait_healthy(url):
        print(f"Telemetry on http://localhost:{port}/ (Ctrl-C stops the server and the generator)", flush=True)
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
