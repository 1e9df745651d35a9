"""docs/architecture.md stays true: every module of ``harness`` is listed in exactly one room of its
room block, and each module imports (also inside functions) only its own room and the rooms
listed above it. Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
# rooms that are a subpackage of harness/ (the others hold top-level modules)
SUBPACKAGES = {"engine", "data", "loading", "preflight", "attribution", "reports", "runners"}


def rooms() -> list[tuple[str, list[str]]]:
    """(room, module names) in the order of the doc's first code block."""
    block = DOC.read_text().split("```")[1]
    out = []
    for line in block.strip().splitlines():
        room, *rest = line.split()
        names = []
        for token in rest:
            if token.startswith("("):
                break
            names.append(token)
        out.append((room, names))
    return out


def module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "models":
        parts = ["harness", "models", *parts[1:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def room_of_module() -> dict[str, int]:
    """Each harness module -> the index of its room."""
    table: dict[str, int] = {}
    for i, (room, names) in enumerate(rooms()):
        for name in names:
            if room == "registry":
                prefix = name  # harness.models and all below it
            elif room in SUBPACKAGES:
                prefix = f"harness.{room}.{name.rstrip('/')}"
            elif name == "__init__":
                prefix = "harness"
            else:
                prefix = f"harness.{name}"
            table[prefix] = i
        if room == "pipeline":
            table["harness.pipeline"] = i
        if room in SUBPACKAGES:
            table[f"harness.{room}"] = i  # the subpackage's __init__
    return table


def lookup(table: dict[str, int], module: str) -> int | None:
    """The room of ``module``: its own entry, else its closest listed parent package's."""
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        key = ".".join(parts[:n])
        if key in table and (n == len(parts) or key != "harness"):
            return table[key]
    return table.get(module)


def sources() -> list[Path]:
    return sorted((ROOT / "harness").rglob("*.py")) + sorted((ROOT / "models").rglob("*.py"))


def imports(path: Path) -> set[str]:
    """Every harness module ``path`` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    package = module_of(path) if path.name == "__init__.py" else module_of(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:  # `from harness.engine import capture` imports a module
                found.add(f"{base}.{a.name}" if a.name != "*" else base)
            found.add(base)
    return {m for m in found if m == "harness" or m.startswith("harness.")}


def test_every_module_is_in_exactly_one_room():
    table = room_of_module()
    unlisted = [
        module_of(p)
        for p in sources()
        if p.name != "__init__.py" and lookup(table, module_of(p)) is None
    ]
    assert unlisted == [], f"not in docs/architecture.md's rooms: {unlisted}"
    names = [f"{room}:{n}" for room, ns in rooms() for n in ns]
    assert len(names) == len(set(names))
    listed = {re.sub(r"/$", "", n) for _, ns in rooms() for n in ns}
    for room, ns in rooms():  # no room lists a module that does not exist
        for n in ns:
            if room in SUBPACKAGES:
                target = ROOT / "harness" / room / n.rstrip("/")
                assert target.with_suffix(".py").exists() or target.is_dir(), f"{room}: {n}"
    assert listed


def test_each_room_imports_only_itself_and_the_rooms_above_it():
    table = room_of_module()
    order = [room for room, _ in rooms()]
    wrong = []
    for path in sources():
        mine = lookup(table, module_of(path))
        for target in imports(path):
            theirs = lookup(table, target)
            if target == "harness" or theirs is None:
                continue  # the package root's lazy API is imported by name, not by room
            if theirs > mine:
                wrong.append(
                    f"{module_of(path)} ({order[mine]}) imports {target} ({order[theirs]})"
                )
    assert wrong == [], "\n".join(wrong)
