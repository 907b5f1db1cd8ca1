"""The promotion gate on real models and data: who gets to production, who never does.

Models are really trained (scikit-learn on the bundled breast-cancer data, and on small
multiclass and regression tables), registered in a real local registry, and judged by the same
functions the promoted asset runs; the serving smoke test then loads what was promoted.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ml_assets.assets.common import ModelContext
from ml_assets.assets.evaluation import Scoring
from ml_assets.assets.promotion import (
    BEATS_CHAMPION,
    DATA_QUALITY,
    NO_DRIFT,
    PROMOTION_NOTE,
    ROLLBACK_NOTE,
    promote,
    rollback,
    run_gates,
)
from ml_assets.assets.serving import serving_spec, smoke_test
from ml_assets.features import assign_split, feature_columns
from ml_assets.files import pack_directory
from ml_assets.platform_data.sources import load_breast_cancer
from ml_assets.quality import population_stability, psi
from ml_assets.registries.base import ARCHIVED, CHALLENGER, PRODUCTION, RegistrationRequest
from ml_assets.registries.local import LocalRegistry
from ml_assets.tables import file_sha256
from ml_assets.teams.spec import PromotionSpec, TeamSpec

MODEL = "clinical.tumor_classifier"


def clinical_features(raw: pd.DataFrame) -> pd.DataFrame:
    """The clinical team's features: every measurement as a float, then the label and split."""
    measured = [c for c in raw.columns if c not in ("row_id", "label")]
    features = raw[measured].astype("float64")
    features.insert(0, "row_id", raw["row_id"].astype("int64"))
    features["label"] = raw["label"].astype("int8")
    features["split"] = assign_split(features["row_id"], holdout_fraction=0.25, seed=0)
    return features


class World:
    """Datasets, features and models on disk, registered in a local registry."""

    def __init__(self, root: Path, model: str = MODEL, scoring: Scoring | None = None) -> None:
        self.root = root
        self.registry = LocalRegistry(root / "registry")
        self.model = model
        self.scoring = scoring or Scoring()
        self.count = 0

    def register(self, raw: pd.DataFrame, *, shuffle_labels: bool = False) -> str:
        """Train the clinical model on ``raw`` and register it."""
        features = clinical_features(raw)
        train = features[features["split"] == "train"]
        labels = train["label"].to_numpy()
        if shuffle_labels:
            labels = np.random.default_rng(7).permutation(labels)
        columns = feature_columns(features)
        # Imputing keeps a null-faulted dataset trainable, as a NaN-tolerant trainer would be,
        # so that it is the promotion gate, not the fit, that stops it.
        estimator = make_pipeline(
            SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=1000)
        ).fit(train[columns], labels)
        return self.register_model(raw, features, estimator, columns)

    def register_model(
        self, dataset: pd.DataFrame, features: pd.DataFrame, estimator: Any, columns: list[str]
    ) -> str:
        """Save ``estimator`` as the runner's bundle and register it."""
        folder = self._folder()
        artifact = folder / "model.joblib"
        classes = (
            sorted(set(features["label"].tolist())) if self.scoring.task != "regression" else None
        )
        joblib.dump(
            {"estimator": estimator, "feature_columns": columns, "task": self.scoring.task,
             "classes": classes},
            artifact,
        )  # fmt: skip
        return self._register(folder, dataset, features, artifact, artifact)

    def register_folder(
        self, dataset: pd.DataFrame, features: pd.DataFrame, write: Callable[[Path], None]
    ) -> str:
        """Register an artifact folder filled by ``write``, stored as registration stores it."""
        folder = self._folder()
        artifact = folder / "artifact"
        artifact.mkdir()
        write(artifact)
        packed = pack_directory(artifact, folder / "artifact.tar")
        return self._register(folder, dataset, features, artifact, packed)

    def _folder(self) -> Path:
        self.count += 1
        folder = self.root / f"v{self.count}"
        folder.mkdir()
        return folder

    def _register(
        self,
        folder: Path,
        dataset: pd.DataFrame,
        features: pd.DataFrame,
        artifact: Path,
        stored: Path,
    ) -> str:
        dataset_path = folder / "dataset.parquet"
        dataset.to_parquet(dataset_path)
        features_path = folder / "features.parquet"
        features.to_parquet(features_path)
        version = self.registry.register(
            RegistrationRequest(
                model_name=self.model,
                artifact_path=str(stored),
                job_id=f"job-{self.count}",
                lineage={
                    "dataset": {
                        "path": str(dataset_path),
                        "data_version": file_sha256(dataset_path),
                    },
                    "features": {"uri": str(features_path)},
                    "training": {
                        "artifact_uri": str(artifact),
                        "artifact_sha256": file_sha256(stored),
                    },
                },
            )
        )
        self.registry.set_alias(self.model, version.version, CHALLENGER)
        return version.version

    def judge(self, version: str, policy: PromotionSpec | None = None) -> dict[str, object]:
        challenger = self.registry.get_version(self.model, version)
        assert challenger is not None
        champion = self.registry.get_by_alias(self.model, PRODUCTION)
        gates = run_gates(challenger, champion, policy or PromotionSpec(), self.scoring)
        return promote(self.registry, self.model, version, gates, run_id=f"run-{version}")

    def production(self) -> str | None:
        found = self.registry.get_by_alias(self.model, PRODUCTION)
        return found.version if found else None

    def smoke(self, version: str) -> dict[str, Any]:
        found = self.registry.get_version(self.model, version)
        assert found is not None
        out_dir = self.root / "serving" / version
        out_dir.mkdir(parents=True, exist_ok=True)
        return smoke_test(found, out_dir, self.scoring)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return load_breast_cancer()


def _checks(note: dict[str, object]) -> dict[str, dict[str, object]]:
    checks = note["checks"]
    assert isinstance(checks, dict)
    return checks


def test_first_version_is_promoted_with_nothing_to_compare(world: World, raw: pd.DataFrame) -> None:
    version = world.register(raw)

    note = world.judge(version)

    assert note["decision"] == "promoted" and note["previous_production"] is None
    assert all(check["passed"] for check in _checks(note).values())
    assert "no production version yet" in str(_checks(note)[BEATS_CHAMPION]["summary"])
    assert world.production() == version
    assert world.registry.get_by_alias(MODEL, CHALLENGER) is None
    stored = world.registry.get_version(MODEL, version)
    assert stored is not None and stored.notes[PROMOTION_NOTE] == note

    smoke = world.smoke(version)
    assert smoke["rows_scored"] == 64 and smoke["task"] == "binary"
    assert 0.0 <= smoke["score_min"] <= smoke["score_mean"] <= smoke["score_max"] <= 1.0
    assert smoke["kserve_sklearn"] is True and "estimator_needs" not in smoke
    assert smoke["artifact_sha256"] == file_sha256(world.root / "v1" / "model.joblib")
    assert (world.root / "serving" / version / "model" / "model.joblib").exists()


def test_a_model_trained_on_shuffled_labels_is_never_promoted(
    world: World, raw: pd.DataFrame
) -> None:
    champion = world.register(raw)
    world.judge(champion)
    weak = world.register(raw, shuffle_labels=True)

    note = world.judge(weak)

    assert note["decision"] == "rejected"
    check = _checks(note)[BEATS_CHAMPION]
    assert check["passed"] is False
    assert float(check["challenger"]) < 0.8 < float(check["champion"])  # type: ignore[arg-type]
    assert check["metric"] == "roc_auc" and check["lower_is_better"] is False
    assert "falls short of champion" in str(check["summary"])
    assert world.production() == champion
    assert world.registry.get_by_alias(MODEL, CHALLENGER).version == weak  # type: ignore[union-attr]


def test_a_better_challenger_is_promoted_and_the_champion_archived(
    world: World, raw: pd.DataFrame
) -> None:
    weak = world.register(raw, shuffle_labels=True)
    world.judge(weak)  # nothing to beat: the first version goes through
    better = world.register(raw)

    note = world.judge(better)

    assert note["decision"] == "promoted" and note["previous_production"] == weak
    assert float(_checks(note)[BEATS_CHAMPION]["challenger"]) > float(  # type: ignore[arg-type]
        _checks(note)[BEATS_CHAMPION]["champion"]  # type: ignore[arg-type]
    )
    assert world.production() == better
    assert world.registry.get_by_alias(MODEL, ARCHIVED).version == weak  # type: ignore[union-attr]


def test_a_schema_fault_in_the_training_data_blocks_promotion(
    world: World, raw: pd.DataFrame
) -> None:
    world.judge(world.register(raw))
    faulty = raw.copy()
    faulty["mean_radius"] = faulty["mean_radius"].round().astype("int64")  # float became int
    faulty = faulty.drop(columns=["mean_symmetry"])  # a column the champion had

    note = world.judge(world.register(faulty))

    assert note["decision"] == "rejected"
    check = _checks(note)[DATA_QUALITY]
    assert check["passed"] is False
    assert "column 'mean_radius' is int, was float" in str(check["summary"])
    assert "missing column 'mean_symmetry'" in str(check["summary"])
    assert world.production() == "1"


def test_nulls_and_declared_ranges_block_promotion(world: World, raw: pd.DataFrame) -> None:
    faulty = raw.copy()
    faulty.loc[faulty.index[:3], "mean_texture"] = np.nan
    faulty.loc[faulty.index[5], "mean_area"] = -10.0
    policy = PromotionSpec(ranges={"mean_area": (0.0, 5000.0)})

    note = world.judge(world.register(faulty.fillna({"mean_texture": np.nan})), policy)

    check = _checks(note)[DATA_QUALITY]
    assert note["decision"] == "rejected" and check["passed"] is False
    assert check["null_counts"] == {"mean_texture": 3}
    assert check["range_violations"]["mean_area"]["rows"] == 1  # type: ignore[index]
    assert world.production() is None


def test_drifted_features_block_promotion(world: World, raw: pd.DataFrame) -> None:
    world.judge(world.register(raw))
    drifted = raw.copy()
    drifted["worst_area"] = drifted["worst_area"] * 3.0  # a unit change upstream

    note = world.judge(world.register(drifted))

    check = _checks(note)[NO_DRIFT]
    assert note["decision"] == "rejected" and check["passed"] is False
    assert check["max_psi_feature"] == "worst_area"
    assert float(check["max_psi"]) > 0.25  # type: ignore[arg-type]
    assert world.production() == "1"


def test_same_data_again_passes_every_check(world: World, raw: pd.DataFrame) -> None:
    world.judge(world.register(raw))

    note = world.judge(world.register(raw))

    assert note["decision"] == "promoted"
    assert float(_checks(note)[NO_DRIFT]["max_psi"]) == pytest.approx(0.0, abs=1e-9)  # type: ignore[arg-type]
    assert world.production() == "2"


def test_rollback_repoints_production_and_is_recorded(world: World, raw: pd.DataFrame) -> None:
    first = world.register(raw)
    world.judge(first)
    second = world.register(raw)
    world.judge(second)

    record = rollback(world.registry, MODEL, None, run_id="run-rb", reason="latency regression")

    assert (record["from_version"], record["to_version"]) == (second, first)
    assert world.production() == first
    assert world.registry.get_by_alias(MODEL, ARCHIVED).version == second  # type: ignore[union-attr]
    rolled_from = world.registry.get_version(MODEL, second)
    rolled_to = world.registry.get_version(MODEL, first)
    assert rolled_from is not None and rolled_to is not None
    assert rolled_from.notes[ROLLBACK_NOTE]["role"] == "from"
    assert rolled_to.notes[ROLLBACK_NOTE]["reason"] == "latency regression"
    with pytest.raises(ValueError, match="replaced no earlier production version"):
        rollback(world.registry, MODEL, None, run_id="run-rb2", reason="again")


def test_psi_is_zero_for_the_same_sample_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=5000)
    assert psi(reference, reference.copy()) == pytest.approx(0.0, abs=1e-12)
    assert psi(reference, rng.normal(size=5000)) < 0.05
    assert psi(reference, rng.normal(loc=1.0, size=5000)) > 0.25


# --- other tasks ----------------------------------------------------------------------------

COLOUR_CENTRES = {"blue": (0.0, 0.0), "green": (3.0, 0.0), "red": (0.0, 3.0)}


def colours(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    """A multiclass dataset: string labels, two numeric features and a string one."""
    rng = np.random.default_rng(seed)
    names = rng.choice(sorted(COLOUR_CENTRES), size=rows)
    xy = np.array([COLOUR_CENTRES[n] for n in names]) + rng.normal(size=(rows, 2))
    return pd.DataFrame(
        {
            "row_id": np.arange(rows, dtype=np.int64),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "shade": rng.choice(["light", "dark"], size=rows),
            "label": names,
        }
    )


def prices(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    """A regression dataset: a float target, linear in two features plus noise."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    return pd.DataFrame(
        {
            "row_id": np.arange(rows, dtype=np.int64),
            "a": a,
            "b": b,
            "label": 2.0 * a - b + 0.5 + rng.normal(scale=0.1, size=rows),
        }
    )


def with_split(dataset: pd.DataFrame) -> pd.DataFrame:
    return dataset.assign(split=assign_split(dataset["row_id"], holdout_fraction=0.3, seed=0))


def _fit(features: pd.DataFrame, columns: list[str], estimator: Any, shuffle: bool) -> Any:
    train = features[features["split"] == "train"]
    labels = train["label"].to_numpy()
    if shuffle:
        labels = np.random.default_rng(7).permutation(labels)
    return estimator.fit(train[columns], labels)


def test_multiclass_models_are_compared_on_macro_f1_with_string_labels(tmp_path: Path) -> None:
    world = World(tmp_path, "paint.colour", Scoring(task="multiclass"))
    dataset = colours()
    features = with_split(dataset)
    columns = ["x", "y"]

    def register(shuffle: bool) -> str:
        estimator = _fit(features, columns, LogisticRegression(), shuffle)
        return world.register_model(dataset, features, estimator, columns)

    champion = register(shuffle=False)
    assert world.judge(champion)["decision"] == "promoted"
    note = world.judge(register(shuffle=True))

    assert note["decision"] == "rejected" and world.production() == champion
    beats = _checks(note)[BEATS_CHAMPION]
    assert beats["passed"] is False and beats["metric"] == "macro_f1"
    assert beats["task"] == "multiclass" and beats["lower_is_better"] is False
    assert float(beats["challenger"]) < 0.6 < 0.85 < float(beats["champion"])  # type: ignore[arg-type]
    # The string label and the string feature neither break nor enter the drift check.
    drift = _checks(note)[NO_DRIFT]
    assert drift["passed"] is True and drift["features_measured"] == 2
    assert drift["features_not_measured"] == ["shade"]
    assert _checks(note)[DATA_QUALITY]["passed"] is True

    smoke = world.smoke(champion)
    assert smoke["task"] == "multiclass" and smoke["rows_scored"] == 64
    assert 1 / 3 <= smoke["score_min"] <= smoke["score_max"] <= 1.0  # top-class probability
    assert smoke["kserve_sklearn"] is True


def test_regression_models_are_compared_on_rmse_where_lower_is_better(tmp_path: Path) -> None:
    world = World(tmp_path, "shop.price", Scoring(task="regression"))
    dataset = prices()
    features = with_split(dataset)
    columns = ["a", "b"]

    def register(shuffle: bool) -> str:
        estimator = _fit(features, columns, LinearRegression(), shuffle)
        return world.register_model(dataset, features, estimator, columns)

    weak = register(shuffle=True)
    world.judge(weak)
    better = register(shuffle=False)
    promoted = world.judge(better)
    rejected = world.judge(register(shuffle=True))

    assert promoted["decision"] == "promoted" and promoted["previous_production"] == weak
    beats = _checks(promoted)[BEATS_CHAMPION]
    assert beats["metric"] == "rmse" and beats["lower_is_better"] is True
    assert float(beats["challenger"]) < 0.2 < 1.0 < float(beats["champion"])  # type: ignore[arg-type]
    assert "lower is better" in str(beats["summary"])
    assert rejected["decision"] == "rejected" and world.production() == better
    assert _checks(rejected)[BEATS_CHAMPION]["passed"] is False
    # A float label is not a feature: only a and b are measured for drift.
    assert _checks(rejected)[NO_DRIFT]["features_measured"] == 2
    assert world.smoke(better)["kserve_sklearn"] is True


@pytest.fixture
def team_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A team's predict and metric functions in a module importable by name."""
    name = f"team_serving_{uuid.uuid4().hex[:8]}"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import numpy as np


            def linear(artifact_path, features):
                weights = np.load(artifact_path / "weights.npy")
                return features[["a", "b"]].to_numpy() @ weights[:2] + weights[2]


            def within_quarter(y_true, y_pred):
                return float(np.mean(np.abs(y_true - y_pred) <= 0.25))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    return name


def _weights(values: list[float]) -> Callable[[Path], None]:
    return lambda folder: np.save(folder / "weights.npy", np.array(values))


def test_folder_artifacts_are_judged_and_smoke_tested_through_the_team_predict_function(
    tmp_path: Path, team_module: str
) -> None:
    scoring = Scoring(task="regression", predict=f"{team_module}:linear")
    world = World(tmp_path, "shop.price", scoring)
    dataset = prices()
    features = with_split(dataset)

    zero = world.register_folder(dataset, features, _weights([0.0, 0.0, 0.0]))
    world.judge(zero)
    exact = world.register_folder(dataset, features, _weights([2.0, -1.0, 0.5]))
    promoted = world.judge(exact)
    worse = world.judge(world.register_folder(dataset, features, _weights([1.0, -1.0, 0.5])))

    assert promoted["decision"] == "promoted" and worse["decision"] == "rejected"
    # The exact weights leave only the noise (sd 0.1); zero weights miss by the whole signal.
    assert float(_checks(promoted)[BEATS_CHAMPION]["challenger"]) < 0.15  # type: ignore[arg-type]
    assert float(_checks(promoted)[BEATS_CHAMPION]["champion"]) > 1.5  # type: ignore[arg-type]

    smoke = world.smoke(exact)
    assert smoke["kserve_sklearn"] is False and smoke["rows_scored"] == 64
    assert smoke["artifact_sha256"] == file_sha256(world.root / "v2" / "artifact.tar")
    assert not (world.root / "serving" / exact / "model").exists()
    version = world.registry.get_version(world.model, exact)
    assert version is not None
    out_dir = world.root / "serving" / exact
    document = serving_spec(ModelContext(_team(team_module), "price"), version, out_dir, smoke)
    assert "kserve" not in document and not (out_dir / "inferenceservice.yaml").exists()
    assert document["custom_predictor"]["predict"] == f"{team_module}:linear"
    assert "custom predictor" in document["custom_predictor"]["reason"]
    assert document["task"] == "regression"
    assert document["artifact_uri"] == str(world.root / "v2" / "artifact")

    _weights([2.0, -1.0, 0.6])(world.root / "v2" / "artifact")  # changed after registration
    with pytest.raises(ValueError, match="was registered with"):
        world.smoke(exact)


def _team(module: str) -> TeamSpec:
    return TeamSpec.model_validate(
        {
            "team": "shop",
            "owners": ["shop@example.com"],
            "models": {
                "price": {
                    "task": "regression",
                    "dataset": {"asset": "platform/raw_prices"},
                    "features": {},
                    "trainer": {"function": "random_forest"},
                    "predict": f"{module}:linear",
                }
            },
        }
    )


def test_the_primary_metric_may_be_a_team_metric_and_must_be_computed(
    tmp_path: Path, team_module: str
) -> None:
    scoring = Scoring(
        task="regression",
        predict=f"{team_module}:linear",
        metrics=(f"{team_module}:within_quarter",),
    )
    world = World(tmp_path, "shop.price", scoring)
    dataset = prices()
    features = with_split(dataset)
    world.judge(world.register_folder(dataset, features, _weights([2.0, -1.0, 1.5])))
    exact = world.register_folder(dataset, features, _weights([2.0, -1.0, 0.5]))

    note = world.judge(exact, PromotionSpec(primary_metric="within_quarter"))

    beats = _checks(note)[BEATS_CHAMPION]
    assert note["decision"] == "promoted" and beats["metric"] == "within_quarter"
    assert beats["lower_is_better"] is False
    assert beats["champion"] == 0.0  # every prediction is 1.0 off
    assert float(beats["challenger"]) > 0.95  # type: ignore[arg-type]
    held = world.judge(
        world.register_folder(dataset, features, _weights([2.0, -1.0, 0.5])),
        PromotionSpec(primary_metric="roc_auc"),
    )
    assert held["decision"] == "rejected"
    assert "the primary metric 'roc_auc' is not computed for a regression model" in str(
        _checks(held)[BEATS_CHAMPION]["summary"]
    )


def test_drift_and_ranges_only_measure_numbers() -> None:
    reference = pd.DataFrame(
        {"x": np.arange(100.0), "flag": [True, False] * 50, "shade": ["dark"] * 100}
    )
    current = reference.assign(x=reference["x"] + 1000.0, shade="light")
    scores = population_stability(reference, current, ["x", "flag", "shade", "absent"])
    assert set(scores) == {"x", "flag"}
    assert scores["x"] > 0.25 and scores["flag"] == pytest.approx(0.0, abs=1e-12)
    from ml_assets.quality import range_violations

    found = range_violations(current, {"shade": (0.0, 1.0), "x": (0.0, 2000.0)})
    assert found == {"shade": {"rows": 100, "problem": "values are not numbers"}}
