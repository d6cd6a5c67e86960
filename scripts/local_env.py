"""Write a checkout's local development settings once (`make install` runs it).

DEBUG=1 and a generated SECRET_KEY, so every manage.py command the README
names works in a checkout without extra variables. telemetry_project/settings.py
reads the file only for variables the environment does not set. An existing
file is never rewritten: its key signs the sessions of a running demo.

    python3 scripts/local_env.py [PATH]   # default: .env.local beside manage.py
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TEMPLATE = """\
# Local development settings for this checkout, written once by `make install`.
# Git- and docker-ignored. Read by telemetry_project/settings.py only for
# variables the environment does not set; delete the file to get a new key.
# A production host has no such file: there DEBUG is off and SECRET_KEY required.
DEBUG=1
SECRET_KEY={key}
"""


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else ROOT / ".env.local"
    if path.exists():
        print(f"{path} exists; kept as it is")
        return 0
    # Owner-only from the start: the key signs sessions.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(TEMPLATE.format(key=secrets.token_urlsafe(50)))
    print(f"Wrote {path} (DEBUG=1 and a generated SECRET_KEY for local development)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
