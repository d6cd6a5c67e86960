"""`python -m bench.report SQLITE.json POSTGRES.json`: both backends' figures as one Markdown table, ratios first.

Each argument is a results file written by `python -m bench --output ...`; a
figure missing from one run shows "-" in that run's columns. This is the table
the README's Performance section and the issue notes quote.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

VERDICT = {True: "met", False: "missed", None: "n/a"}


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        digits = 2 if abs(value) < 10 else 1 if abs(value) < 1000 else 0
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def cell(figure: dict[str, Any] | None) -> str:
    """'ratio (value unit), verdict' for one backend's figure."""
    if figure is None:
        return "-"
    value = f"{_number(figure['value'])} {figure['unit']}".strip()
    ratio = figure.get("ratio")
    head = f"**{_number(ratio)}x** ({value})" if ratio is not None else value
    return f"{head}, {VERDICT[figure['passed']]}"


def _order(key: str) -> tuple[int, str]:
    match = re.match(r"(\d+)(.*)", key)
    return (int(match.group(1)), match.group(2)) if match else (10**6, key)


def table(runs: list[dict[str, Any]]) -> str:
    by_key = [{f["key"]: f for f in run["figures"]} for run in runs]
    keys = sorted({key for figures in by_key for key in figures}, key=_order)
    header = ["#", "figure", *(run["backend"] for run in runs), "target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in keys:
        some = next(figures[key] for figures in by_key if key in figures)
        cells = [cell(figures.get(key)) for figures in by_key]
        lines.append(f"| {key.split('_')[0]} | {some['title']} | " + " | ".join(cells) + f" | {some['target']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = (argv if argv is not None else sys.argv[1:]) or ["bench/results.json"]
    runs = [json.loads(Path(p).read_text()) for p in paths]
    print(table(runs))
    for path, run in zip(paths, runs, strict=True):
        print(
            f"\n{path}: {run['backend']}, {run['mode']} run, {run['cores']} cores, {run['seconds']} s, {run['generated_at']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
