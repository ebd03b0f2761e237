"""The package's shape: modules stay readable (issue 8)."""

from __future__ import annotations

import ast
from pathlib import Path

import ufdl_node

PACKAGE = Path(ufdl_node.__file__).resolve().parent
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_longer_than_600_lines() -> None:
    """Every module of ufdl_node has at most 600 lines."""
    long = {str(p.relative_to(PACKAGE)): n for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_no_function_is_longer_than_60_lines() -> None:
    """Every function and method of ufdl_node spans at most 60 lines, decorators and docstring included."""
    long: dict[str, int] = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = (node.end_lineno or node.lineno) - first + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}"] = lines
    assert not long, long


def test_the_phase_rule_lives_only_in_protocol() -> None:
    """No module but protocol.py derives a job's phase from its fields or matches stop-reason text."""
    needles = ('start_time") is None', 'startswith("aborted', 'startswith("cancelled')
    found = [f"{p.relative_to(PACKAGE)}: {n}" for p in _modules() if p.name != "protocol.py"
             for n in needles if n in p.read_text(encoding="utf-8")]
    assert not found, found
