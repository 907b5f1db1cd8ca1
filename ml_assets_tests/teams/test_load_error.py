"""A team whose YAML is wrong: the error a user sees first, in the UI and the CLI, names the file,
the line and the field."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget

ROOT = Path(__file__).parents[2]


@pytest.fixture
def broken_team(tmp_path: Path) -> Path:
    """A package ``broken_team`` on tmp_path: the wine team with a misspelt task on line 10."""
    package = tmp_path / "broken_team"
    package.mkdir()
    text = (ROOT / "ml_assets" / "teams" / "wine" / "team.yaml").read_text()
    text = text.replace("team: wine", "team: broken").replace("task: multiclass", "task: multi")
    (package / "team.yaml").write_text(text)
    shutil.copy(ROOT / "ml_assets" / "teams" / "wine" / "definitions.py", package)
    (package / "__init__.py").write_text("")
    return tmp_path


def test_the_location_error_a_webserver_shows_starts_with_file_line_and_field(
    broken_team: Path,
) -> None:
    line = next(
        number
        for number, text in enumerate(
            (broken_team / "broken_team" / "team.yaml").read_text().splitlines(), 1
        )
        if "task: multi" in text
    )
    target = ModuleTarget(
        module_name="broken_team.definitions",
        attribute=None,
        working_directory=str(broken_team),
        location_name="broken",
    )
    with dg.instance_for_test() as instance, WorkspaceProcessContext(instance, target) as context:
        entry = context.create_request_context().get_code_location_entries()["broken"]
    assert entry.load_error is not None
    first = entry.load_error.message.splitlines()[0]
    assert first.startswith("ml_assets.location.TeamLocationError: ")
    assert f"broken_team/team.yaml, line {line}: " in first
    assert first.endswith("task: Input should be 'binary', 'multiclass' or 'regression'")
    assert "models.cultivar_classifier.task" in first


def test_definitions_validate_prints_the_problem_before_any_traceback(broken_team: Path) -> None:
    out = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "definitions",
            "validate",
            "-m",
            "broken_team.definitions",
        ],
        capture_output=True,
        text=True,
        cwd=broken_team,
        timeout=120,
    )
    assert out.returncode != 0
    text = out.stdout + out.stderr
    problem = text.index("broken_team/team.yaml, line")
    assert "models.cultivar_classifier.task" in text[problem:].splitlines()[0]
    assert "Traceback" not in text[:problem]
