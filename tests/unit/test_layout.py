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


#: stream_consumer's layers, lowest first: the core (a batch, its store, the writer thread, the
#: running consumer), then the commands an operator runs on top of it
CONSUMER_LAYERS = {
    "batch": 0,
    "metrics": 0,
    "store": 1,
    "writer": 2,
    "consumer": 3,
    "offsets": 4,
    "dead_letters": 4,
    "users": 4,
    "__main__": 5,
}


@pytest.mark.parametrize("module", sorted(CONSUMER_LAYERS))
def test_stream_consumer_modules_import_only_the_layers_below_them(module):
    """Lazy imports inside functions count too: a command may use the consumer, never the reverse."""
    path = REPO_ROOT / "stream_consumer" / f"{module}.py"
    ours = {m.removeprefix("stream_consumer.") for m in imported_modules(path) if m.startswith("stream_consumer.")}
    assert sorted(m for m in ours if CONSUMER_LAYERS[m] >= CONSUMER_LAYERS[module]) == []


def test_every_stream_consumer_module_has_a_layer():
    assert {p.stem for p in (REPO_ROOT / "stream_consumer").glob("*.py")} - {"__init__"} == set(CONSUMER_LAYERS)
