"""Outside services a test needs (PostgreSQL, Redis, nginx, Chromium): skip or fail, never silently.

On a developer's machine a missing service is a skip with a reason that says
how to get it. In CI (`.ci/run` sets REQUIRE_SCALE_OUT=1, after installing and
starting all of them) the same absence is a failure: a run that quietly skipped
the PostgreSQL, fan-out, proxy or browser tests must not come out green.
"""

from __future__ import annotations

import os

import pytest


def services_required() -> bool:
    return os.environ.get("REQUIRE_SCALE_OUT") == "1"


def require_service(name: str, available: bool, how: str = "", *, allow_module_level: bool = False) -> None:
    """Return if `available`; otherwise skip, or fail under REQUIRE_SCALE_OUT=1."""
    if available:
        return
    reason = f"{name} is not available" + (f": {how}" if how else "")
    if services_required():
        pytest.fail(f"REQUIRE_SCALE_OUT=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)
