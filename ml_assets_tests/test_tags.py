"""Tag names live in ml_assets.tags alone, and no two names share a string."""

from __future__ import annotations

import ast
from pathlib import Path

from ml_assets import tags

ROOT = Path(__file__).parents[1]
TAGS = {value for name, value in vars(tags).items() if name.isupper()}


def test_every_tag_name_is_distinct() -> None:
    names = [name for name in vars(tags) if name.isupper()]
    assert len(names) >= 10
    assert len(TAGS) == len(names)


def test_no_module_but_tags_spells_a_tag() -> None:
    """A string literal shaped like a tag (``ml_assets/team``, ``ml_assets.job_id``...) outside
    tags.py is a second definition waiting to drift."""
    spelled = []
    for path in (ROOT / "ml_assets").rglob("*.py"):
        if path.name == "tags.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in TAGS
            ):
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert spelled == []
