"""The frozen clock: every test that depends on "now" runs at a literal instant.

A module states its instant once and asks for `frozen`:

    NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)   # or an ISO string

    def test_it_expires_after_an_hour(frozen):
        ...
        frozen.shift(3600)                             # or frozen.move_to(NOW + timedelta(hours=1))

`frozen` reads the module's `NOW` (there is no default: a module without one
fails at setup, so no test runs at an instant it did not choose) and yields
time-machine's traveller with tick=False, so the clock only moves when the test
moves it. A module whose every test needs the clock lists it in `pytestmark`
with `pytest.mark.usefixtures("frozen")`; a module with more to set up around
the clock (a cache to clear, a knob to set) wraps it in a small fixture of its
own that takes `frozen`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import time_machine


@pytest.fixture
def frozen(request: pytest.FixtureRequest) -> Iterator[time_machine.Coordinates]:
    """The clock stopped at the test module's NOW for the whole test; yields its Coordinates (shift, move_to)."""
    now = getattr(request.module, "NOW", None)
    if now is None:
        pytest.fail(f"{request.module.__name__} uses the `frozen` clock but sets no NOW (tests/support/clock.py)")
    with time_machine.travel(now, tick=False) as traveller:
        yield traveller


def iso(moment: datetime) -> str:
    """`moment` as the API writes it: ISO 8601 in UTC with a Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def at(minutes_ago: float) -> str:
    """The ISO timestamp `minutes_ago` before the clock: under `frozen`, before the module's NOW."""
    return iso(datetime.now(UTC) - timedelta(minutes=minutes_ago))
