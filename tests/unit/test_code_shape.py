"""The size rules of the code (docs/architecture.md, "Where the code is"): no module over 300
lines and no function over 60, in the product (src/), the tools and the benchmarks, except
the few listed here with the reason splitting them would hurt."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60

# path (from the repository's root) → why it stays longer
LONG_MODULES: dict[str, str] = {}
# "path:function" → why it stays longer
LONG_FUNCTIONS: dict[str, str] = {}


def _modules() -> list[Path]:
    found = [
        path
        for folder in ("src", "tools", "benchmarks")
        for path in sorted((REPO / folder).rglob("*.py"))
    ]
    assert len(found) > 80, len(found)
    return found


def test_no_module_is_over_300_lines() -> None:
    long = {}
    for path in _modules():
        name = str(path.relative_to(REPO))
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES and name not in LONG_MODULES:
            long[name] = lines
    assert not long, long


def test_no_function_is_over_60_lines() -> None:
    long = {}
    for path in _modules():
        name = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                key = f"{name}:{node.name}"
                if lines > MAX_FUNCTION_LINES and key not in LONG_FUNCTIONS:
                    long[key] = lines
    assert not long, long


def test_every_exception_is_still_needed() -> None:
    """An entry for code that has since been split is stale: drop it."""
    names = {str(p.relative_to(REPO)) for p in _modules()}
    for key in LONG_MODULES:
        assert key in names, key
        assert len((REPO / key).read_text().splitlines()) > MAX_MODULE_LINES, key
    for key in LONG_FUNCTIONS:
        path, _, function = key.partition(":")
        tree = ast.parse((REPO / path).read_text())
        sizes = [
            (n.end_lineno or n.lineno) - n.lineno + 1
            for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == function
        ]
        assert sizes and max(sizes) > MAX_FUNCTION_LINES, key
