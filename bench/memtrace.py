"""tracemalloc inside the server under soak (bench/soak.py --tracemalloc).

The soak's server is a separate daphne process. With TELEMETRY_TRACEMALLOC set
to a path prefix, telemetry_project/asgi.py calls `install()`: tracemalloc
starts, and each SIGUSR1 writes a snapshot to `<prefix>.<n>` (n = 1, 2, ...).
The soak sends the signals and diffs the snapshots with `top_growth`.
Never set in production: tracing costs memory and CPU on every allocation.
"""

from __future__ import annotations

import os
import signal
import tracemalloc
from pathlib import Path
from typing import Any

ENV = "TELEMETRY_TRACEMALLOC"
# One frame: the summary groups by source line, and every extra frame multiplies
# the cost of each allocation (8 frames slowed a 2,000 points/s server to 1/30).
FRAMES = 1


def install() -> None:
    prefix = os.environ.get(ENV)
    if not prefix:
        return
    tracemalloc.start(FRAMES)
    taken = 0

    def dump(signum: int, frame: Any) -> None:
        nonlocal taken
        taken += 1
        target = Path(f"{prefix}.{taken}")
        partial = target.with_name(target.name + ".partial")
        tracemalloc.take_snapshot().dump(str(partial))
        # Renamed when complete, so the soak never loads half a file.
        os.replace(partial, target)

    signal.signal(signal.SIGUSR1, dump)


def snapshot_path(prefix: str | Path, n: int) -> Path:
    return Path(f"{prefix}.{n}")


def top_growth(before: Path, after: Path, limit: int = 20) -> dict[str, Any]:
    """The `limit` source lines whose live allocations grew most between two snapshots."""
    ignore = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
        tracemalloc.Filter(False, "<unknown>"),
    ]
    old = tracemalloc.Snapshot.load(str(before)).filter_traces(ignore)
    new = tracemalloc.Snapshot.load(str(after)).filter_traces(ignore)
    stats = sorted(new.compare_to(old, "lineno"), key=lambda s: s.size_diff, reverse=True)
    total_old = sum(s.size for s in old.statistics("filename"))
    total_new = sum(s.size for s in new.statistics("filename"))
    return {
        "traced_mb_before": round(total_old / 2**20, 2),
        "traced_mb_after": round(total_new / 2**20, 2),
        "top_growth_by_line": [
            {
                "where": f"{s.traceback[0].filename}:{s.traceback[0].lineno}",
                "size_diff_kb": round(s.size_diff / 1024, 1),
                "size_kb": round(s.size / 1024, 1),
                "count_diff": s.count_diff,
            }
            for s in stats[:limit]
        ],
    }
