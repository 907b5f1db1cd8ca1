"""A training job that fails for good shows as failed where a user looks.

A team made for this test (a folder in a temporary directory, loaded like any team) trains with
a function that raises. After "Materialize all" in ``dagster dev``, the reconciler records the
failure and the ``training_succeeded`` check; the test then opens the catalog and the model's
page in headless Chromium and expects the failure and its message there.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Page, expect

from ml_assets.assets.common import ModelKeys
from ml_assets_tests.ui.test_web_ui import (
    PIPELINE_TIMEOUT_S,
    UI_TIMEOUT_MS,
    chain_of,
    materialize_group_from_ui,
    save_screenshot,
    wait_for,
)

if TYPE_CHECKING:
    from ml_assets_tests.ui.conftest import DagsterDev

# Every test that runs a whole Dagster deployment (webserver or daemon plus code servers) is
# in one xdist group: one worker runs them one after another, since two at once on 2 cores
# slow each other several-fold.
pytestmark = [pytest.mark.timeout(720), pytest.mark.xdist_group("deployments")]

TEAM = "doomed"
KEYS = ModelKeys(TEAM, "cultivar_classifier")
MESSAGE = "loss is nan after epoch 3: the learning rate 50.0 diverged"

# The colour of the "Never materialized" status in the catalog row that links to an asset.
STATUS_COLOUR = """
(path) => {
  for (const link of document.querySelectorAll("a")) {
    if (!(link.getAttribute("href") || "").split("?")[0].endsWith(path)) continue;
    let row = link;
    while (row && !(row.innerText || "").includes("Never materialized")) row = row.parentElement;
    if (!row) continue;
    const status = [...row.querySelectorAll("*")].find(
      (e) => e.childElementCount === 0 && e.textContent.trim() === "Never materialized"
    );
    if (status) return getComputedStyle(status).color;
  }
  return null;
}
"""

CHECK_QUERY = """
query Check($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks { name executionForLatestMaterialization { status } }
        }
      }
    }
  }
}
"""


@pytest.fixture
def extra_pythonpath(tmp_path: Path) -> list[str]:
    """A team package, ``doomed_team``, whose training function always raises."""
    package = tmp_path / "teams" / "doomed_team"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text(
        textwrap.dedent(
            f"""
            def fit(train, hyperparameters, context):
                context.log("epoch 3: loss nan")
                raise ValueError({MESSAGE!r})
            """
        )
    )
    (package / "definitions.py").write_text(
        "from pathlib import Path\n"
        "from ml_assets.location import team_definitions\n"
        "defs = team_definitions(Path(__file__).with_name('team.yaml'))\n"
    )
    (package / "team.yaml").write_text(
        textwrap.dedent(
            """
            team: doomed
            owners: [doomed-ml@example.com]
            models:
              cultivar_classifier:
                task: multiclass
                dataset: {function: ml_assets.teams.wine.data:load_wines}
                features: {label: cultivar, id_column: wine_id}
                trainer: {function: doomed_team.train:fit, hyperparameters: {lr: 50.0}}
                retry: {max_attempts: 2}
            """
        )
    )
    return [str(tmp_path / "teams")]


@pytest.fixture
def workspace_file(tmp_path: Path, extra_pythonpath: list[str]) -> Path:
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: doomed_team.definitions\n"
        f"      location_name: {TEAM}\n"
    )
    return workspace


@pytest.mark.ui
@pytest.mark.usefixtures("chromium_path")
def test_a_training_that_fails_for_good_shows_as_failed_with_its_message(
    dagster_dev: DagsterDev, page: Page, tmp_path: Path
) -> None:
    dev = dagster_dev
    materialize_group_from_ui(page, dev, TEAM, chain_of(KEYS))

    def check_failed() -> bool | None:
        node = dev.graphql(CHECK_QUERY, {"key": {"path": KEYS.trained.path}})
        checks = node["assetNodeOrError"]["assetChecksOrError"]["checks"]
        statuses = {
            c["name"]: (c["executionForLatestMaterialization"] or {}).get("status") for c in checks
        }
        return True if statuses.get("training_succeeded") == "FAILED" else None

    wait_for(dev, "the reconciler to record the failed training", check_failed, PIPELINE_TIMEOUT_S)

    # The model's page: the failed check, with the job's own error message.
    page.goto(dev.url + "/assets/" + "/".join(KEYS.trained.path) + "?view=checks")
    expect(page.get_by_text("training_succeeded").first).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.get_by_text(re.compile("diverged")).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    save_screenshot(page, tmp_path / "failed_checks.png", full_page=True)

    # The catalog: the trained model's status is drawn in the error colour, unlike a model
    # that simply has not run yet (its evaluation).
    page.goto(dev.url + f"/assets?groups={TEAM}")

    def status_colour(asset: str) -> str:
        path = f"/assets/{TEAM}/{asset}"
        expect(page.locator(f'a[href$="{path}"]').first).to_be_visible(timeout=UI_TIMEOUT_MS)
        found = page.wait_for_function(STATUS_COLOUR, arg=path, timeout=UI_TIMEOUT_MS)
        return str(found.json_value())

    failed, idle = status_colour(KEYS.trained.path[-1]), status_colour(KEYS.evaluation.path[-1])
    save_screenshot(page, tmp_path / "failed_catalog.png", full_page=True)
    assert failed != idle, f"the failed model looks like one never run ({failed})"
    red, green, blue = (int(v) for v in re.findall(r"\d+", failed)[:3])
    assert red > green and red > blue, f"the failed model's status is not red: {failed}"
