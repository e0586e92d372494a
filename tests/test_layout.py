"""The import rules of docs/architecture.md, checked on the source (imports at any depth of
the code, function bodies included):

- no import circles in app/, models/ or workers/ (a package's `__init__` re-exporting its
  own children is no edge);
- `models` imports nothing of ours, `app` never imports `workers`;
- models' packages import only their own package and those before it in MODELS_ORDER;
- no product module over MAX_LINES lines."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

MAX_LINES = 300
PRODUCT = ("app", "models", "workers")
# models' packages, each importing only its own package and those before it; the base
# modules (errors, events, files, fields) are importable by all and import only each other.
MODELS_ORDER = ("layers", "lora", "families", "spec", "data", "formats", "inference", "training")
MODELS_BASE = ("errors", "events", "files", "fields")


def modules(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


@cache
def all_modules() -> dict[str, Path]:
    """Every product module by dotted name (a package by its `__init__`)."""
    return {module_name(p): p for package in PRODUCT for p in modules(package)}


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    """The module an ImportFrom names, relative imports resolved against `path`."""
    if node.level == 0:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def reexports(package: str) -> dict[str, str]:
    """The names a package's `__init__` takes from its own children: name -> child module."""
    path = all_modules().get(package)
    if path is None or path.name != "__init__.py":
        return {}
    found: dict[str, str] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and _absolute(path, node).startswith(package + "."):
            found |= {a.asname or a.name: _absolute(path, node) for a in node.names}
    return found


@cache
def imports(path: Path) -> frozenset[str]:
    """The dotted names a module imports, at any depth of its code: `from a.b import c` is
    `a.b.c` when that is a module of ours, else the child of `a.b` that `a/b/__init__.py`
    re-exports `c` from, else `a.b`."""
    known = all_modules()
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(path, node)
            for a in node.names:
                full = f"{base}.{a.name}" if base else a.name
                names.add(full if full in known else reexports(base).get(a.name, base))
    return frozenset(n for n in names if n)


def _ours(name: str) -> str | None:
    """The product module `name` refers to (its longest known prefix), or None."""
    known = all_modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports. A package's `__init__` importing its own
    children (a re-export) draws no edge."""
    edges: dict[str, set[str]] = {}
    for name, path in all_modules().items():
        targets = {t for t in map(_ours, imports(path)) if t is not None}
        if path.name == "__init__.py":
            targets = {t for t in targets if not t.startswith(name + ".")}
        edges[name] = targets
    return edges


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(sorted(component))
    return found


def _cycle(edges: dict[str, set[str]], members: list[str]) -> list[str]:
    """One circle through a component, as a path that ends where it starts."""
    inside = set(members)
    start = members[0]
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth first: the shortest way back to `start`
        node = queue.pop(0)
        for child in sorted(edges[node] & inside):
            if child == start:
                return paths[node] + [start]
            if child not in paths:
                paths[child] = paths[node] + [child]
                queue.append(child)
    return members


def test_no_import_circles() -> None:
    edges = graph()
    selves = sorted(n for n, targets in edges.items() if n in targets)
    circles = [" -> ".join(_cycle(edges, c)) for c in strongly_connected(edges) if len(c) > 1]
    assert not selves, f"modules importing themselves: {selves}"
    assert not circles, "import circles:\n  " + "\n  ".join(circles)


@pytest.mark.parametrize(("package", "forbidden"), [("models", {"app", "workers"}), ("app", {"workers"})])
def test_imports_go_one_way(package: str, forbidden: set[str]) -> None:
    found = {rel(p): sorted(n for n in imports(p) if n.split(".")[0] in forbidden) for p in modules(package)}
    offenders = {p: names for p, names in found.items() if names}
    assert not offenders, f"{package} may not import {sorted(forbidden)}: {offenders}"


def _models_rank(name: str) -> int | None:
    """A models module's place in MODELS_ORDER (-1: a base module), None outside models."""
    parts = name.split(".")
    if parts[0] != "models" or len(parts) < 2:
        return None
    if parts[1] in MODELS_BASE:
        return -1
    return MODELS_ORDER.index(parts[1]) if parts[1] in MODELS_ORDER else None


def test_models_packages_import_downwards() -> None:
    known = all_modules()
    strays = sorted(n for n in known if n.startswith("models.") and _models_rank(n) is None)
    assert not strays, f"models modules in no package of MODELS_ORDER or MODELS_BASE: {strays}"
    offenders: dict[str, list[str]] = {}
    for name, path in known.items():
        rank = _models_rank(name)
        if rank is None:
            continue
        own = name.split(".")[1]
        for target in sorted(t for t in map(_ours, imports(path)) if t):
            to = _models_rank(target)
            if to is None or target.split(".")[1] == own:
                continue
            if to > rank or (rank == -1 and to != -1):
                offenders.setdefault(rel(path), []).append(target)
    order = " < ".join(("(" + "/".join(MODELS_BASE) + ")", *MODELS_ORDER))
    assert not offenders, f"models imports against the order {order}: {offenders}"


def test_modules_stay_small() -> None:
    sizes = {rel(p): len(p.read_text(encoding="utf-8").splitlines()) for package in PRODUCT for p in modules(package)}
    over = {p: n for p, n in sorted(sizes.items()) if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"
