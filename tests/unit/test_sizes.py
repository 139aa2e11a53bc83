"""
The house stays readable: no module of the server over about 400 lines,
no class over about 250 (docs/architecture.rst).  The margins below are
the "about": a part that grows past them is split by what it does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sysadm_dispatch"
MODULE_LINES = 400
CLASS_LINES = 270

MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_package_is_found() -> None:
    assert len(MODULES) > 50


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_classes_stay_small(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MODULE_LINES, f"{path.name}: split it by what its parts do"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            assert size <= CLASS_LINES, f"{path.name}: class {node.name} has {size} lines"
