"""The layout's import rules, read from the code with ast (docs/architecture.md).

- reads never import the write path: metrics/series/ and dashboard/ import nothing from metrics/ingest/;
- ingest never imports live or api: publishing after commit is a hook that live/ connects;
- alerts, called by ingest with validated rows, import neither ingest, live nor api;
- live imports neither ingest nor api;
- the foundation (models, kinds, points, errors, stats) imports no subpackage;
- no two modules import each other, directly or around a circle.

Every import counts, including those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("metrics", "dashboard", "telemetry_project")
FOUNDATION = ("metrics.models", "metrics.kinds", "metrics.points", "metrics.errors", "metrics.stats")
SUBPACKAGES = tuple(
    f"metrics.{name}." for name in ("ingest", "series", "alerts", "live", "api", "maintenance", "management")
)

# (importer prefix, forbidden prefixes, the rule's name)
RULES = [
    (
        "metrics.series",
        ("metrics.ingest", "metrics.live", "metrics.api", "metrics.maintenance"),
        "reads never import the write path",
    ),
    ("dashboard", ("metrics.ingest",), "reads never import the write path"),
    ("metrics.ingest", ("metrics.live", "metrics.api", "dashboard"), "ingest never imports live or api"),
    (
        "metrics.alerts",
        ("metrics.ingest", "metrics.live", "metrics.api", "dashboard"),
        "alerts are called by ingest, never the reverse",
    ),
    ("metrics.live", ("metrics.ingest", "metrics.api", "dashboard"), "live is fed by a hook, not by imports"),
    *((module, SUBPACKAGES, "the foundation imports no subpackage") for module in FOUNDATION),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                found[module_name(path)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `name` imports (a `from package import module` counts as the module)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            targets = [f"{origin}.{alias.name}" for alias in node.names] + [origin]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                out.add(target)
    return out


def is_models_module(name: str) -> bool:
    """A subpackage's models.py: metrics/models.py imports them so Django registers them with the app."""
    return name.endswith(".models")


GRAPH = {name: imports(name, path, set(modules())) for name, path in modules().items()}


def test_the_rules_read_some_imports():
    assert GRAPH["metrics.ingest.store"], "the import reader found nothing: the rules below would pass vacuously"


@pytest.mark.parametrize(("importer", "forbidden", "rule"), RULES, ids=[f"{r[0]}: {r[2]}" for r in RULES])
def test_layer_rule(importer, forbidden, rule):
    broken = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name == importer or name.startswith(importer + ".")
        for target in targets
        if target.startswith(forbidden) and not is_models_module(target)
    )
    assert not broken, f"{rule}: " + "; ".join(broken)


def test_no_import_cycles():
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert not cycles, "import cycles: " + " | ".join(" <-> ".join(c) for c in cycles)
