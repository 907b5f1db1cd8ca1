"""The non-public Dagster names ml_assets uses still exist and still mean what it relies on."""

from __future__ import annotations

import ast
from pathlib import Path

import dagster as dg

from ml_assets.dagster_private import (
    CODE_VERSION_TAG,
    INPUT_EVENT_POINTER_TAG_PREFIX,
    get_input_data_version_tag,
)

ROOT = Path(__file__).parents[1]


def test_a_run_materialization_carries_the_tags_the_reconciler_writes() -> None:
    """A real run's materialization of an asset with an input records the code version and the
    input's data version under exactly the tag names the wrapper exports."""

    @dg.asset
    def upstream() -> int:
        return 1

    @dg.asset(code_version="v7")
    def downstream(upstream: int) -> int:
        return upstream + 1

    with dg.instance_for_test() as instance:
        assert dg.materialize([upstream, downstream], instance=instance).success
        event = instance.get_latest_materialization_event(dg.AssetKey("downstream"))
        assert event is not None
        tags = event.asset_materialization.tags or {}  # type: ignore[union-attr]
    assert tags[CODE_VERSION_TAG] == "v7"
    assert get_input_data_version_tag(dg.AssetKey("upstream")) in tags
    assert any(name.startswith(INPUT_EVENT_POINTER_TAG_PREFIX) for name in tags)


def test_no_other_module_imports_dagster_internals() -> None:
    offenders = []
    for path in (ROOT / "ml_assets").rglob("*.py"):
        if path.name == "dagster_private.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("dagster._")]
    assert offenders == []
