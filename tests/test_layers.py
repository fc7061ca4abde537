"""Imports run one way: commands -> parts (sidecar, evictor) -> the shared core (s3cache)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What each layer may import of the project's own packages.
MAY_IMPORT = {
    "s3cache": {"s3cache"},
    "sidecar": {"sidecar", "s3cache"},
    "evictor": {"evictor", "s3cache"},
    "commands": {"commands", "sidecar", "evictor", "s3cache"},
}


def project_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(MAY_IMPORT)


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_no_import_runs_back_up(package):
    wrong = {str(path.relative_to(ROOT)): sorted(project_imports(path) - MAY_IMPORT[package])
             for path in sorted((ROOT / package).rglob("*.py"))}
    assert {path: names for path, names in wrong.items() if names} == {}


def test_no_part_is_optional():
    """Every part ships, so nothing asks whether one is installed."""
    for package in MAY_IMPORT:
        for path in (ROOT / package).rglob("*.py"):
            assert "find_spec" not in path.read_text(), path
