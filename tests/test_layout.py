"""The package layout: stages depend on each other in one direction only, and every module imports."""

from __future__ import annotations

import ast
import importlib
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llmrank_spark"


def _stage(path: Path) -> str:
    """The subpackage (stage) a module belongs to, or the module name for top-level modules."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def stage_imports() -> dict[str, set[str]]:
    """Stage -> the other stages its modules import at module level (imports inside functions are lazy)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        stage = _stage(path)
        graph.setdefault(stage, set())
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llmrank_spark."):
                other = node.module.split(".")[1]
                if other != stage:
                    graph[stage].add(other)
    return graph


def test_stages_import_each_other_without_a_cycle():
    graph = stage_imports()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        raise AssertionError(f"stages import each other in a cycle: {error.args[1]}") from error
    assert order.index("config") < order.index("pipeline")
    # The pure metrics depend on nothing else of the package.
    assert graph["metrics"] == set()


def test_every_module_imports():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        importlib.import_module(name)
