"""Container health check: exit 0 when /metrics/health answers 200 on this instance.

Used by the Dockerfile HEALTHCHECK and docker-compose. The Host header is the
first ALLOWED_HOSTS entry, so the check passes the same host validation as
real traffic.
"""

import os
import sys
import urllib.error
import urllib.request


def host_header() -> str:
    first = (os.environ.get("ALLOWED_HOSTS") or "localhost").split(",")[0].strip()
    if not first or first == "*":
        return "localhost"
    return "health" + first if first.startswith(".") else first


def main() -> int:
    port = os.environ.get("PORT", "8000")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics/health", headers={"Host": host_header()})
    try:
        with urllib.request.urlopen(request, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
