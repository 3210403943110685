"""The package's layout, what `make lint`'s import contracts (pyproject.toml, import-linter) cannot say:
no import cycle through a package's own `__init__` and a module inside it (the contracts see cycles
between siblings only), modules short enough to read in one sitting, and every module saying what it
owns.

Reads every module of `analytics/` with `ast` (nothing is imported), so an import hidden in a
function body or under `TYPE_CHECKING` counts like any other.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "analytics"
MAX_LINES = 500
# one concept that reads best whole (the reason is in each module's docstring)
LONG_MODULES: set[str] = set()


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, package: Path = PACKAGE) -> set[str]:
    """Every `analytics...` module `path` imports, wherever in the file the import stands."""
    name = module_name(path, package)
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            # `from analytics.x import y` where y is a module imports analytics.x.y
            found.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in found if m == "analytics" or m.startswith("analytics.")}


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    return {name: {m for m in imports_of(p, package) if m in modules and m != name} for name, p in modules.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def through_a_package(cycle: list[str]) -> bool:
    """Whether a cycle holds a package and a module inside it: one no sibling contract sees."""
    return any(m != p and m.startswith(p + ".") for p in cycle for m in cycle)


def test_no_import_cycle_through_a_package_and_its_own_modules() -> None:
    assert [c for c in cycles(graph()) if through_a_package(c)] == []


def test_modules_stay_readable_in_one_sitting() -> None:
    long = {module_name(p): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES and module_name(p) not in LONG_MODULES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_module_says_what_it_owns() -> None:
    missing = [module_name(p) for p in PACKAGE.rglob("*.py") if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"modules without a docstring: {missing}"


@pytest.mark.parametrize("source, cycle", [
    # a package's __init__ re-exporting a module that imports the package back, in a function
    ({"views/__init__.py": "from analytics.views.build import x\n",
      "views/build.py": "def f():\n    import analytics.views\n"}, ["analytics.views", "analytics.views.build"]),
    # relative imports, through a grandchild
    ({"lake/__init__.py": "from .index import store\n", "lake/index/__init__.py": "",
      "lake/index/store.py": "from .. import x\n"}, ["analytics.lake", "analytics.lake.index.store"]),
])
def test_the_cycle_check_catches_what_it_guards(tmp_path: Path, source: dict[str, str], cycle: list[str]) -> None:
    pkg = tmp_path / "analytics"
    for rel, text in source.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    (pkg / "__init__.py").write_text("")
    assert [c for c in cycles(graph(pkg)) if through_a_package(c)] == [cycle]
