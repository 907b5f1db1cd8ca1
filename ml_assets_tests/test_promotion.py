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
from ml_assets.assets.serving import smoke_test
from ml_assets.features import assign_split, feature_columns
from ml_assets.files import pack_directory
from ml_assets.platform_data.sources import load_breast_cancer
from ml_assets.quality import population_stability, psi
from ml_assets.registries.base import ARCHIVED, CHALLENGER, PRODUCTION, RegistrationRequest
from ml_assets.registries.local import LocalRegistry
from ml_assets.tables import file_sha256
from ml_assets.teams.spec import PromotionSpec

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
        out_dir.mkdir(parents=True)
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
