"""The layout the README describes holds: rooms only import lower rooms, and no module imports
itself back through others (an import circle). Function-local imports are ruff's PLC0415."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# conversations/ rooms, lowest first (README.md, "Layout"). A module may import its own room and
# any lower level; rooms side by side on one level stay out of each other's way.
LEVELS: list[set[str]] = [
    {"runtime"},  # the server loop: events.publish_sync hands events to it
    {"models", "errors", "events", "rendering", "bounded_json"},
    {"tree", "access", "audit"},
    {"images", "usage", "sharing", "documents"},
    {"answers"},
    {"retention", "presets"},
    {"chat", "teams"},
    {"api"},
    {"web", "admin"},
    {"signals", "templatetags", "management"},  # Django's wiring
    {"apps"},
]
LEVEL_OF = {room: level for level, rooms in enumerate(LEVELS) for room in rooms}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("chatsite", "conversations", "providers"):
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Project modules this file imports at any depth (a module, or a package's name)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name in MODULES}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "conversations" and len(parts) > 1 else None


def test_every_room_of_conversations_is_placed_on_a_level() -> None:
    rooms = {_room(name) for name in MODULES} - {None}
    assert rooms <= set(LEVEL_OF), f"rooms without a level: {rooms - set(LEVEL_OF)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _room(m)))
def test_a_room_imports_only_lower_rooms(module: str) -> None:
    room = _room(module)
    assert room is not None
    wrong = []
    for target in GRAPH[module]:
        other = _room(target)
        if other is None or other == room:
            continue
        if LEVEL_OF[other] >= LEVEL_OF[room]:
            wrong.append(f"{target} ({other}, level {LEVEL_OF[other]})")
    assert not wrong, f"{module} ({room}, level {LEVEL_OF[room]}) imports {wrong}"


def test_no_module_imports_itself_back_through_others() -> None:
    circles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(GRAPH[node]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert circles == []
