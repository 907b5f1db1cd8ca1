"""The package's parts import one another without a cycle, and the composition root
(``ml_assets.location``) stands apart from the declarations it composes.

Every import counts, a lazy one inside a function included. A team's own folder
(``ml_assets/teams/<team>/``) is a part of its own: it is the team's code, which imports the
library, never the other way round.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "ml_assets"


def part_of(module: str) -> str:
    """``ml_assets.assets.training`` -> ``assets``; a team's own module -> ``team:<name>``."""
    parts = module.split(".")
    if len(parts) > 3 and parts[1] == "teams":
        return f"team:{parts[2]}"
    return parts[1] if len(parts) > 1 else parts[0]


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        source = part_of(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("ml_assets.") and part_of(name) != source:
                    graph.setdefault(source, set()).add(part_of(name))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_no_two_parts_import_each_other_even_indirectly() -> None:
    graph = import_graph()
    assert {"assets", "sensors", "teams", "backends", "location"} <= set(graph)
    assert find_cycle(graph) is None


def test_only_team_folders_use_the_composition_root() -> None:
    users = sorted(part for part, targets in import_graph().items() if "location" in targets)
    assert users and all(part.startswith("team:") for part in users), users


def test_the_team_spec_imports_no_asset_sensor_or_location() -> None:
    spec_imports = import_graph()["teams"]
    assert not spec_imports & {"assets", "sensors", "location", "platform_data", "policy"}
