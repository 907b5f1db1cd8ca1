"""Four teams' pipelines driven through the real web UI, end to end.

A user opens the ``clinical`` asset group in ``dagster dev`` and clicks "Materialize all", then
does the same for three teams that are only folders of their own code (multiclass, regression,
a container script). The rest happens without them. Each run builds its dataset and features
and submits training; the team's reconciler sensor records the trained model when the detached
job finishes, and the team's automation sensor evaluates, registers, promotes and serves it.
The test then checks what the user sees on the clinical evaluation's page: its metrics and its
ROC plot.
"""

from __future__ import annotations

import base64
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import dagster as dg
import pytest
from playwright.sync_api import Page, expect

from ml_assets.assets.common import ModelKeys

if TYPE_CHECKING:
    from ml_assets_tests.ui.conftest import DagsterDev

# Every test that runs a whole Dagster deployment (webserver or daemon plus code servers) is
# in one xdist group: one worker runs them one after another, since two at once on 2 cores
# slow each other several-fold.
pytestmark = [pytest.mark.timeout(900), pytest.mark.xdist_group("deployments")]

TEAM = "clinical"
MODEL = ModelKeys(TEAM, "tumor_classifier")


def chain_of(keys: ModelKeys) -> list[dg.AssetKey]:
    """A model's assets from its dataset to its serving spec."""
    return [
        keys.dataset,
        keys.features,
        keys.trained,
        keys.evaluation,
        keys.registered,
        keys.promoted,
        keys.serving,
    ]


CHAIN = chain_of(MODEL)
RAW_KEY = ["platform", "raw_breast_cancer"]
# Teams written only as folders: their own data, features and training code (or script).
OWN_CODE_MODELS = {
    team: ModelKeys(team, model)
    for team, model in {
        "wine": "cultivar_classifier",
        "diabetes": "progression_regressor",
        "screening": "malignancy_screen",
    }.items()
}
EVALUATION_PATH = "/assets/" + "/".join(MODEL.evaluation.path)
OWNER = "clinical-ml@example.com"
AUTOMATION_SENSOR = f"{TEAM}_automation"
MIN_ROC_AUC = 0.95
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOT_MARKDOWN = re.compile(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")
LAUNCHED_TOAST = re.compile(r"Launched run ([0-9a-f]{8})")
SHARED_SCREENSHOT = Path("/tmp/ml_assets_ui_evaluation.png")

RAW_DATA_TIMEOUT_S = 150.0
LAUNCH_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 120.0
PIPELINE_TIMEOUT_S = 360.0  # four teams at once; about twice the time seen locally
POLL_S = 1.0
UI_TIMEOUT_MS = 60_000

LATEST_MATERIALIZATION = """
query Latest($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    __typename
    ... on Asset {
      assetMaterializations(limit: 1) {
        runId
        timestamp
        metadataEntries {
          label
          ... on TextMetadataEntry { text }
          ... on MarkdownMetadataEntry { mdStr }
          ... on PathMetadataEntry { path }
          ... on FloatMetadataEntry { floatValue }
          ... on IntMetadataEntry { intValue }
          ... on BoolMetadataEntry { boolValue }
          ... on JsonMetadataEntry { jsonString }
        }
      }
    }
  }
}
"""

RUN_IDS = """
query RunIds {
  runsOrError(limit: 200) {
    __typename
    ... on Runs { results { runId } }
  }
}
"""

RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      runId
      status
      tags { key value }
      assetSelection { path }
      stepStats { stepKey status }
    }
  }
}
"""

TERMINAL_RUN_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}
_VALUE_FIELDS = ("text", "mdStr", "path", "floatValue", "intValue", "boolValue", "jsonString")

T = TypeVar("T")


@dataclass(frozen=True)
class Materialization:
    """The latest materialization of an asset, as the webserver reports it."""

    run_id: str
    timestamp_ms: int
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Run:
    """The parts of a run the test looks at."""

    run_id: str
    status: str
    tags: dict[str, str]
    asset_keys: set[tuple[str, ...]]
    step_status: dict[str, str]


def latest_materialization(dev: DagsterDev, key: Sequence[str]) -> Materialization | None:
    """The asset's latest materialization, or None if it has none yet."""
    asset = dev.graphql(LATEST_MATERIALIZATION, {"key": {"path": list(key)}})["assetOrError"]
    if asset["__typename"] != "Asset" or not asset["assetMaterializations"]:
        return None
    (event,) = asset["assetMaterializations"]
    metadata = {}
    for entry in event["metadataEntries"]:
        values = [entry[name] for name in _VALUE_FIELDS if name in entry]
        metadata[entry["label"]] = values[0] if values else None
    return Materialization(event["runId"], int(event["timestamp"]), metadata)


def find_run(dev: DagsterDev, prefix: str) -> str | None:
    """The full id of the one run whose id starts with ``prefix`` (as the UI's toast shows it)."""
    runs = dev.graphql(RUN_IDS)["runsOrError"]["results"]
    matches = [run["runId"] for run in runs if run["runId"].startswith(prefix)]
    assert len(matches) <= 1, f"several runs start with {prefix}: {matches}"
    return matches[0] if matches else None


def get_run(dev: DagsterDev, run_id: str) -> Run:
    """One run's status, tags, asset selection and step outcomes."""
    run = dev.graphql(RUN, {"runId": run_id})["runOrError"]
    assert run["__typename"] == "Run", f"run {run_id}: {run}"
    return Run(
        run_id=run["runId"],
        status=run["status"],
        tags={tag["key"]: tag["value"] for tag in run["tags"]},
        asset_keys={tuple(key["path"]) for key in run["assetSelection"] or []},
        step_status={step["stepKey"]: step["status"] for step in run["stepStats"]},
    )


def wait_for(dev: DagsterDev, what: str, probe: Callable[[], T | None], timeout: float) -> T:
    """Poll ``probe`` until it returns something other than None; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        dev.ensure_running()
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}", pytrace=False)
        time.sleep(POLL_S)


def wait_for_run(dev: DagsterDev, run_id: str) -> Run:
    """The run once it has finished, whichever way."""

    def finished() -> Run | None:
        run = get_run(dev, run_id)
        return run if run.status in TERMINAL_RUN_STATUSES else None

    return wait_for(dev, f"run {run_id} to finish", finished, RUN_TIMEOUT_S)


def step_key(key: Sequence[str]) -> str:
    """The step key Dagster gives an asset's op."""
    return "__".join(key)


def materialize_group_from_ui(
    page: Page, dev: DagsterDev, team: str = TEAM, chain: Sequence[dg.AssetKey] = CHAIN
) -> str:
    """Open a team's asset group, click "Materialize all"; the id of the launched run."""
    page.goto(dev.url + f"/locations/{team}/asset-groups/{team}")
    # The graph shortens long names in the middle of the chain; its two ends show in full.
    for key in (chain[0], chain[-1]):
        expect(page.get_by_text(key.path[-1], exact=True).first).to_be_visible(
            timeout=UI_TIMEOUT_MS
        )
    # Dagster's buttons carry their icon's name in front of their label.
    materialize_all = page.get_by_role("button", name=re.compile(r"(^|\s)Materialize all$"))
    expect(materialize_all).to_be_enabled(timeout=UI_TIMEOUT_MS)
    materialize_all.click()

    launched = page.get_by_text(LAUNCHED_TOAST)
    confirm = page.get_by_role("dialog").get_by_role(
        "button", name=re.compile(r"(^|\s)(Launch|Materialize)")
    )
    expect(launched.or_(confirm).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    if not launched.is_visible():
        confirm.first.click()
    expect(launched).to_be_visible(timeout=UI_TIMEOUT_MS)
    match = LAUNCHED_TOAST.search(launched.inner_text())
    assert match, f"unexpected launch message: {launched.inner_text()!r}"
    prefix = match.group(1)
    return wait_for(
        dev, f"the run {prefix}… in the run list", lambda: find_run(dev, prefix), LAUNCH_TIMEOUT_S
    )


def save_screenshot(page: Page, path: Path, *, full_page: bool = False) -> None:
    """Save a screenshot of the page and say where it is."""
    page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")


@pytest.mark.ui
@pytest.mark.usefixtures("chromium_path")  # skip (or fail under CI) before starting dagster dev
def test_materialize_all_from_the_ui_takes_each_team_to_a_serving_spec(
    dagster_dev: DagsterDev, page: Page, tmp_path: Path
) -> None:
    """'Materialize all' on four teams' groups, one click after another, and the pipelines run
    side by side: the clinical model is trained, evaluated (its ROC plot visible on the page),
    registered, promoted and served, and so are the models of a multiclass team, a regression
    team and a container-script team that are each only a folder of their own code."""
    dev = dagster_dev
    raw = wait_for(
        dev,
        "the automation sensor to build platform/raw_breast_cancer",
        lambda: latest_materialization(dev, RAW_KEY),
        RAW_DATA_TIMEOUT_S,
    )
    assert raw.run_id, "the raw data should be built by a run of the platform automation"

    clicked_at_ms = time.time() * 1000
    clinical_run_id = materialize_group_from_ui(page, dev)
    clicked = {
        team: (time.monotonic(), materialize_group_from_ui(page, dev, team, chain_of(keys)))
        for team, keys in OWN_CODE_MODELS.items()
    }
    check_the_clinical_pipeline(dev, page, tmp_path, clinical_run_id, clicked_at_ms)
    for team, keys in OWN_CODE_MODELS.items():
        started, run_id = clicked[team]
        check_an_own_code_pipeline(dev, keys, run_id)
        print(f"{team}: Materialize all -> serving spec in {time.monotonic() - started:.0f} s")
    page.goto(dev.url + "/assets/" + "/".join(OWN_CODE_MODELS["wine"].trained.path))
    save_screenshot(page, tmp_path / "wine_trained.png", full_page=True)


def check_the_clinical_pipeline(
    dev: DagsterDev, page: Page, tmp_path: Path, ui_run_id: str, clicked_at_ms: float
) -> None:
    """The clinical run launched from the UI, what the sensors made of it, and what the user
    sees on the evaluation's page."""
    ui_run = wait_for_run(dev, ui_run_id)
    assert ui_run.status == "SUCCESS", f"the UI's run ended {ui_run.status}: {ui_run}"
    assert ui_run.asset_keys == {tuple(key.path) for key in CHAIN}
    for key in (MODEL.dataset, MODEL.features, MODEL.trained):
        assert ui_run.step_status.get(step_key(key.path)) == "SUCCESS", ui_run.step_status
    for key in (MODEL.evaluation, MODEL.registered, MODEL.promoted, MODEL.serving):
        # Training only submits a job, so nothing downstream can run in the launching run.
        assert ui_run.step_status.get(step_key(key.path)) == "SKIPPED", ui_run.step_status

    registered = wait_for(
        dev,
        "the sensors to train, evaluate and register clinical/tumor_classifier",
        lambda: latest_materialization(dev, MODEL.registered.path),
        PIPELINE_TIMEOUT_S,
    )
    trained = latest_materialization(dev, MODEL.trained.path)
    evaluation = latest_materialization(dev, MODEL.evaluation.path)
    assert trained is not None
    assert evaluation is not None

    # The trained model is recorded by the reconciling sensor, not by any run.
    assert trained.run_id == "", f"trained model came from run {trained.run_id}"
    assert trained.timestamp_ms > clicked_at_ms
    job_id = trained.metadata.get("job_id")
    assert job_id, trained.metadata
    assert trained.metadata.get("submitted_by_run") == ui_run_id
    assert trained.metadata.get("backend") == "local"

    # Evaluation ran automatically, in a run of the team's automation sensor.
    assert evaluation.run_id and evaluation.run_id != ui_run_id
    evaluation_run = wait_for_run(dev, evaluation.run_id)
    assert evaluation_run.status == "SUCCESS", f"the automation's run: {evaluation_run}"
    assert evaluation_run.tags.get("dagster/sensor_name") == AUTOMATION_SENSOR
    assert evaluation.metadata.get("model_job_id") == job_id
    assert evaluation.metadata.get("passed") is True, evaluation.metadata.get("verdict")
    roc_auc = evaluation.metadata.get("roc_auc")
    assert isinstance(roc_auc, float), evaluation.metadata
    assert roc_auc > MIN_ROC_AUC
    plot = PLOT_MARKDOWN.fullmatch(str(evaluation.metadata.get("plot", "")))
    assert plot, f"plot is not a markdown PNG image: {str(evaluation.metadata.get('plot'))[:200]}"
    assert base64.b64decode(plot.group(1)).startswith(PNG_MAGIC)

    assert registered.run_id, "registration should run as a run of the automation sensor"
    assert registered.metadata.get("job_id") == job_id
    assert registered.metadata.get("registry") == "mlflow"
    # The first version has no champion to beat: promoted, then its serving spec is ready.
    serving = wait_for(
        dev,
        "the automation to promote the version and build its serving spec",
        lambda: latest_materialization(dev, MODEL.serving.path),
        PIPELINE_TIMEOUT_S,
    )
    promoted = latest_materialization(dev, MODEL.promoted.path)
    assert promoted is not None and promoted.metadata.get("decision") == "promoted"
    assert promoted.metadata.get("version") == registered.metadata.get("version")
    assert serving.metadata.get("ready") is True
    assert serving.metadata.get("mlflow_model_uri") == (
        f"models:/clinical.tumor_classifier/{registered.metadata.get('version')}"
    )

    # What the user sees on the evaluation asset's page.
    page.goto(dev.url + EVALUATION_PATH)
    expect(page.get_by_text(OWNER).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    roc_row = page.get_by_role("row").filter(
        has=page.get_by_role("cell", name="roc_auc", exact=True)
    )
    expect(roc_row).to_have_count(1, timeout=UI_TIMEOUT_MS)
    shown = roc_row.get_by_role("cell").last.inner_text().strip()
    assert float(shown) == pytest.approx(roc_auc, abs=1e-9), f"the page shows roc_auc {shown!r}"
    save_screenshot(page, tmp_path / "evaluation_metadata.png", full_page=True)

    plot_row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="plot", exact=True))
    plot_row.get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog").filter(has_text="plot")
    image = dialog.locator("img")
    expect(image).to_have_count(1, timeout=UI_TIMEOUT_MS)
    expect(image).to_be_visible()
    expect(image).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
    expect(image).to_have_js_property("complete", True)
    natural_width = image.evaluate("img => img.naturalWidth")
    assert natural_width > 0, "the browser could not decode the evaluation plot"
    final = tmp_path / "evaluation.png"
    save_screenshot(page, final)
    shutil.copyfile(final, SHARED_SCREENSHOT)


def check_an_own_code_pipeline(dev: DagsterDev, keys: ModelKeys, run_id: str) -> None:
    """A folder-only team's model went from the UI's run to a promoted model and a ready
    serving spec."""
    serving = wait_for(
        dev,
        f"{keys.team}/{keys.model} to be trained, evaluated, promoted and served",
        lambda: latest_materialization(dev, keys.serving.path),
        PIPELINE_TIMEOUT_S,
    )
    assert serving.metadata.get("ready") is True, serving.metadata
    trained = latest_materialization(dev, keys.trained.path)
    assert trained is not None and trained.metadata.get("submitted_by_run") == run_id
    promoted = latest_materialization(dev, keys.promoted.path)
    assert promoted is not None and promoted.metadata.get("decision") == "promoted"
