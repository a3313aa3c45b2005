"""Dependencies point one way: what the tiers and the benchmarks share lives in tests/support/, and
no benchmark reaches into a test tier."""

from __future__ import annotations

import ast

import pytest

from common.settings import REPO_ROOT

TIERS = ("tests.unit", "tests.integration", "tests.e2e")


def imported_modules(path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_no_benchmark_imports_a_test_tier(path):
    assert sorted(m for m in imported_modules(path) if m.startswith(TIERS)) == []


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "tests" / "support").glob("*.py")), ids=lambda p: p.name)
def test_shared_support_imports_no_test_tier(path):
    assert sorted(m for m in imported_modules(path) if m.startswith(TIERS)) == []
