"""The import rules of docs/architecture.md: `models` imports nothing of ours, `app` never
imports `workers` (anywhere, function bodies included), and the service's modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

MAX_LINES = 300


def imported(path: Path) -> set[str]:
    """Top-level package names a module imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def modules(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


@pytest.mark.parametrize(("package", "forbidden"), [("models", {"app", "workers"}), ("app", {"workers"})])
def test_imports_go_one_way(package: str, forbidden: set[str]) -> None:
    offenders = {str(p.relative_to(REPO_ROOT)): imported(p) & forbidden for p in modules(package)}
    assert not {p: names for p, names in offenders.items() if names}


def test_service_modules_stay_small() -> None:
    sizes = {
        str(p.relative_to(REPO_ROOT)): len(p.read_text().splitlines()) for p in modules("app") + modules("workers")
    }
    assert not {p: n for p, n in sizes.items() if n > MAX_LINES}
