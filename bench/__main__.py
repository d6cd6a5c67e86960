"""`python -m bench [--quick] [--postgres] [--only 1,2,...]`: run the figures, print a table, write results.json."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from .common import CORES, Config, Figure, make_workdir

RESULTS = Path(__file__).resolve().parent / "results.json"
MODULES = {
    "ingest": ("1", "2"),
    "query": ("3", "7", "6"),
    "ws": ("4", "5"),
    "anomaly": ("8", "9"),
    "pages": ("10", "11"),
    "ws_memory": ("12",),
    "scale": ("14",),
}


def _setup_django(workdir: Path) -> None:
    # The bench process mostly uses metrics' pure functions (summarise, tags_hash);
    # only figure 9 (anomaly evaluation cost) opens the settings' database, a
    # SQLite file in this working directory.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "telemetry_project.settings")
    os.environ.setdefault("DEBUG", "1")
    os.environ["TELEMETRY_DATA_DIR"] = str(workdir / "bench-process")
    os.environ["TELEMETRY_SCHEDULER"] = "0"
    import logging

    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)


def fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(figures: list[Figure]) -> str:
    header = ("#", "figure", "ratio", "value", "baseline", "target", "result")
    rows = [
        (
            f.key.split("_")[0],
            f.title,
            fmt(f.ratio) + ("x" if f.ratio is not None else ""),
            f"{fmt(f.value)} {f.unit}",
            fmt(f.baseline),
            f.target,
            {True: "PASS", False: "FAIL", None: "n/a"}[f.passed],
        )
        for f in figures
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("{:<" + str(w) + "}" for w in widths)
    return "\n".join([line.format(*header), line.format(*("-" * w for w in widths)), *(line.format(*r) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (seconds, not minutes); used by the test suite"
    )
    parser.add_argument(
        "--postgres", action="store_true", help="PostgreSQL + Redis instead of SQLite + in-memory layer"
    )
    parser.add_argument("--only", default="", help="comma-separated figure numbers, e.g. 1,2")
    parser.add_argument("--output", default=str(RESULTS), help="where to write the JSON results")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (databases, server logs)")
    args = parser.parse_args(argv)
    workdir = make_workdir()
    cfg = Config(
        quick=args.quick, postgres=args.postgres, workdir=workdir, only=set(filter(None, args.only.split(","))) or None
    )
    _setup_django(workdir)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from . import anomaly_eval, fig_ingest, fig_pages, fig_query, fig_scale, fig_ws, fig_ws_memory

    modules = {
        "ingest": fig_ingest,
        "query": fig_query,
        "ws": fig_ws,
        "anomaly": anomaly_eval,
        "pages": fig_pages,
        "ws_memory": fig_ws_memory,
        "scale": fig_scale,
    }
    figures: list[Figure] = []
    started = time.perf_counter()
    log(
        f"bench: {'quick' if cfg.quick else 'full'} run, {'PostgreSQL + Redis' if cfg.postgres else 'SQLite + in-memory layer'}, {CORES} cores, workdir {workdir}"
    )
    for name, module in modules.items():
        if cfg.only and not cfg.only & set(MODULES[name]):
            continue
        log(f"[{name}]")
        t0 = time.perf_counter()
        try:
            figures.extend(module.run(cfg, log))
            log(f"[{name}] done in {time.perf_counter() - t0:.1f} s")
        except Exception as exc:
            traceback.print_exc()
            for number in MODULES[name]:
                if not cfg.only or number in cfg.only:
                    figures.append(
                        Figure(
                            f"{number}_error",
                            f"{name} figures failed: {type(exc).__name__}: {exc}"[:200],
                            None,
                            "",
                            "",
                            False,
                        )
                    )
    figures.sort(key=lambda f: f.key)
    out = {
        "generated_at": datetime.now(UTC).isoformat(),
        "mode": "quick" if cfg.quick else "full",
        "backend": "postgresql+redis" if cfg.postgres else "sqlite+inmemory",
        "cores": CORES,
        "seconds": round(time.perf_counter() - started, 1),
        "figures": [f.as_dict() for f in figures],
    }
    Path(args.output).write_text(json.dumps(out, indent=2, default=str))
    print(table(figures))
    print(f"\n{CORES} cores; {out['seconds']} s; results in {args.output}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
