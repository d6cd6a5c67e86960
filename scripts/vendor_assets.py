"""Copy the pinned front-end libraries from node_modules to static/vendor.

The list below is the one place that says which files the pages load
(templates/base.html). The adapter bundle includes date-fns; the health
matrix is an HTML table, so no Chart.js matrix plugin is needed.
"""

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = {
    "htmx.org/dist/htmx.min.js": "htmx.min.js",
    "chart.js/dist/chart.umd.js": "chart.umd.js",
    "chartjs-adapter-date-fns/dist/chartjs-adapter-date-fns.bundle.min.js": "chartjs-adapter-date-fns.bundle.min.js",
}


def main() -> int:
    target = ROOT / "static" / "vendor"
    target.mkdir(parents=True, exist_ok=True)
    for src, dst in FILES.items():
        path = ROOT / "node_modules" / src
        if not path.exists():
            print(f"missing {path}; run npm ci", file=sys.stderr)
            return 1
        shutil.copyfile(path, target / dst)
    print(f"vendored {len(FILES)} files into {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
