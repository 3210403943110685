"""The package's layout: imports point down the data flow, with no cycles, at module level or inside functions.

Reads every module of `analytics/` with `ast` (nothing is imported), so an import hidden in a
function body or under `TYPE_CHECKING` counts like any other.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "analytics"
# The rooms in data-flow order: a module may import its own room and the rooms before it.
ROOMS = ("core", "query", "lake", "views", "adaptive", "engines", "serving", "batch", "checks", "bench", "reports")
TOP = len(ROOMS)  # analytics/__init__.py, __main__.py and the cli package: the shells over everything
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


def rank(module: str) -> int:
    parts = module.split(".")
    return ROOMS.index(parts[1]) if len(parts) > 1 and parts[1] in ROOMS else TOP


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in g.items() for b in targets
                  if rank(b) > rank(a) and b != "analytics")


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


def test_every_module_sits_in_a_room() -> None:
    loose = [n for n in graph() if rank(n) == TOP and n not in ("analytics", "analytics.__main__")
             and n.split(".")[:2] != ["analytics", "cli"]]
    assert not loose, f"modules outside the rooms {ROOMS}: {loose}"


def test_imports_point_down_the_flow() -> None:
    assert upward_imports(graph()) == []


def test_no_import_cycles() -> None:
    # `analytics/__init__` re-exports the Workbench; a room importing the top package is upward already
    assert cycles(graph()) == []


def test_modules_stay_readable_in_one_sitting() -> None:
    long = {module_name(p): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES and module_name(p) not in LONG_MODULES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_module_says_what_it_owns() -> None:
    missing = [module_name(p) for p in PACKAGE.rglob("*.py") if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"modules without a docstring: {missing}"


@pytest.mark.parametrize("source, expected", [
    ({"a.py": "from analytics.views import build\n", "views/__init__.py": '"""v"""\n',
      "views/build.py": "def f():\n    from analytics.a import x\n"}, "cycle"),
    ({"query/m.py": "import analytics.serving.router\n", "serving/__init__.py": "",
      "serving/router.py": "", "query/__init__.py": ""}, "upward"),
    ({"lake/__init__.py": "", "lake/p.py": "from ..views.build import x\n", "views/__init__.py": "",
      "views/build.py": ""}, "upward"),
])
def test_the_checks_catch_what_they_guard(tmp_path: Path, source: dict[str, str], expected: str) -> None:
    pkg = tmp_path / "analytics"
    for rel, text in source.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    (pkg / "__init__.py").write_text("")
    g = graph(pkg)
    if expected == "cycle":
        assert cycles(g) == [["analytics.a", "analytics.views.build"]]
    else:
        assert upward_imports(g), g
