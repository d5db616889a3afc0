"""The import structure: one import name, the shared core below the parts, the demo above them, no circles.

Read from the source (every import statement, lazy and TYPE_CHECKING ones included), so a circle or a core
module that reaches into a part fails here before it fails at some user's import time.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PARTS = ("harness", "hardening", "watchdog", "analysis")


def _package_dirs() -> dict[str, Path]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {pkg: ROOT / folder for pkg, folder in pyproject["tool"]["setuptools"]["package-dir"].items()}


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg, folder in _package_dirs().items():
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("")
            mods[".".join([pkg, *(p for p in rel.parts if p != "__init__")])] = f
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports (absolute names), whether or not it is one of ours."""
    out: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + is_pkg]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = {f"{mod}.{a.name}" for a in node.names} & known
            out |= subs
            if len(subs) < len(node.names):
                out.add(mod)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _part_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "diehardlab":
        return "other"
    if len(parts) > 1 and parts[1] in (*PARTS, "demo"):
        return parts[1]
    return "core"


def test_every_module_imports_our_packages_by_their_one_name():
    for name, deps in _graph().items():
        bare = sorted(d for d in deps if d.split(".")[0] in (*PARTS, "demo"))
        assert not bare, f"{name} imports {bare}: write diehardlab.<component>"


def test_the_core_imports_no_part_and_no_part_imports_the_demo():
    for name, deps in _graph().items():
        layer = _part_of(name)
        for dep in deps:
            target = _part_of(dep)
            if layer == "core":
                assert target in ("core", "other"), f"core module {name} imports {dep} (a part)"
            elif layer in PARTS:
                assert target != "demo", f"{name} imports {dep}: the demo sits above the parts"


def test_the_campaign_schema_stays_in_the_core():
    deps = _graph()["diehardlab.campaign"]
    assert all(_part_of(d) in ("core", "other") for d in deps), deps


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                circles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return circles


def test_no_import_circles():
    graph = _graph()
    # Importing a submodule imports its parent packages anyway: those edges are not circles.
    edges = {n: {d for d in deps if d in graph and d != n and not n.startswith(d + ".")} for n, deps in graph.items()}
    assert not _circles(edges), f"import circles: {_circles(edges)}"


def test_the_check_finds_a_circle(tmp_path):
    # The checker itself, on the runner/simulator circle this structure cut, rebuilt on purpose (one import lazy).
    (tmp_path / "a.py").write_text("from diehardlab.harness import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from diehardlab.harness.a import X\n")
    mods = {"diehardlab.harness.a": tmp_path / "a.py", "diehardlab.harness.b": tmp_path / "b.py"}
    graph = {n: _imports(n, p, set(mods)) for n, p in mods.items()}
    assert graph["diehardlab.harness.a"] == {"diehardlab.harness.b"}
    assert "diehardlab.harness.a" in graph["diehardlab.harness.b"]
    edges = {n: {d for d in deps if d in graph} for n, deps in graph.items()}
    assert _circles(edges) == [["diehardlab.harness.a", "diehardlab.harness.b"]]
