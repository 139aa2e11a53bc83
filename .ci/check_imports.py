#!/usr/bin/env python3
"""
The arrows between the rooms of ``sysadm_dispatch`` (docs/architecture.rst),
checked from the source: every import, at any depth of a module and under
``TYPE_CHECKING`` too, read with ``ast`` (nothing is imported).

The rooms are layers; a room may import the rooms of the layers below its
own, never one beside or above it::

    transports
    api, ops
    core, auth
    process, store
    reactors

The composition root (the modules at the top of the package: ``server``,
``tap``, ``embed``, ...) may import every room.  The client imports nothing
of the server but ``auth.users`` (for ``default_state_dir``) and the
reactor's types (``reactors``, for type checking only); the
command-line entry ``cli`` only ``auth`` and ``client``.

    python .ci/check_imports.py [PACKAGE_DIR]

prints each import that breaks the rule and exits 1 if there is one.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

PACKAGE = "sysadm_dispatch"
LAYERS = (
    ("transports",),
    ("api", "ops"),
    ("core", "auth"),
    ("process", "store"),
    ("reactors",),  # the module of the reactor's types, below every room
)
#: Rooms outside the layers, and exactly what of the package each may import.
OWN_RULES = {
    "client": ("client", "auth.users", "reactors"),
    "cli": ("cli", "auth", "client"),
    "web": (),
}
#: Imports that break the rule today, each with why it is let through.  An
#: entry no longer needed makes the check fail too, so that it is removed.
EXCEPTIONS: dict[tuple[str, str], str] = {}


class Import(NamedTuple):
    module: str  # the importing module, without the package prefix ("core.dispatcher")
    target: str  # what it imports, without the package prefix ("process.runner")
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> Iterator[Import]:
    """The package's own modules that the file at ``path`` imports."""
    name = module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield Import(name, alias.name[len(PACKAGE) + 1:], node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Relative: from the module's package, up level - 1 more.
                here = [PACKAGE, *name.split(".")] if name else [PACKAGE]
                base = here if is_package else here[:-1]
                base = base[:len(base) - (node.level - 1)]
                absolute = ".".join(base + ([node.module] if node.module else []))
            else:
                absolute = node.module or ""
            if absolute != PACKAGE and not absolute.startswith(PACKAGE + "."):
                continue
            target = absolute[len(PACKAGE) + 1:]
            if node.module is None or absolute == PACKAGE:
                # "from . import x" or "from sysadm_dispatch import x": each name is a module or an attribute.
                for alias in node.names:
                    yield Import(name, f"{target}.{alias.name}" if target else alias.name, node.lineno)
            else:
                yield Import(name, target, node.lineno)


def room_of(module: str) -> str:
    return module.split(".", 1)[0] if module else ""


def layer_of(room: str) -> int | None:
    for depth, rooms in enumerate(LAYERS):
        if room in rooms:
            return depth
    return None


def within(target: str, allowed: str) -> bool:
    return target == allowed or target.startswith(allowed + ".")


def allowed(imp: Import) -> bool:
    """Whether ``imp`` follows the rule (exceptions aside)."""
    room, target_room = room_of(imp.module), room_of(imp.target)
    if room == target_room:
        return True
    if room in OWN_RULES:
        return any(within(imp.target, rule) for rule in OWN_RULES[room])
    mine = layer_of(room)
    if mine is None:
        return True  # the composition root (and __init__): every room
    theirs = layer_of(target_room)
    return theirs is not None and theirs > mine


def check(root: Path) -> list[str]:
    """The problems found in the package at ``root``, one line each."""
    problems = []
    used: set[tuple[str, str]] = set()
    for path in sorted(root.rglob("*.py")):
        for imp in imports_of(path, root):
            if allowed(imp):
                continue
            key = (imp.module, imp.target)
            if key in EXCEPTIONS:
                used.add(key)
                continue
            where = path.relative_to(root.parent)
            problems.append(f"{where}:{imp.line}: {room_of(imp.module)} may not import {imp.target} "
                            f"({room_of(imp.target) or PACKAGE}): see docs/architecture.rst")
    for module, target in sorted(set(EXCEPTIONS) - used):
        problems.append(f"{module} no longer imports {target}: remove the exception from .ci/check_imports.py")
    return problems


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / PACKAGE
    problems = check(root)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"imports: the rooms of {root.name} follow docs/architecture.rst")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
