"""ml_assets.evaluation for every task: multiclass and regression metrics against hand-computed
cases, a real scikit-learn multiclass bundle, a team's predict function on an artifact that is
not a bundle, a team's metric functions, thresholds on any metric and each task's picture."""

from __future__ import annotations

import json
import math
import struct
import textwrap
import uuid
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from ml_assets.evaluation import (
    MULTICLASS_METRICS,
    REGRESSION_METRICS,
    SCATTER_MAX_POINTS,
    Evaluation,
    check_predictions,
    check_thresholds,
    class_labels,
    evaluate,
    load_model,
    metric_functions,
    predict,
    render_evaluation_png,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# --- multiclass, by hand ------------------------------------------------------------------
# Ten rows, classes ant < bee < cat. Each probability row's largest entry is the prediction.
CLASSES = ["ant", "bee", "cat"]
MC_TRUE = ["ant", "ant", "ant", "ant", "bee", "bee", "bee", "cat", "cat", "cat"]
MC_PROBA = [
    [0.7, 0.2, 0.1],  # ant -> ant
    [0.6, 0.3, 0.1],  # ant -> ant
    [0.5, 0.25, 0.25],  # ant -> ant
    [0.3, 0.6, 0.1],  # ant -> bee
    [0.2, 0.7, 0.1],  # bee -> bee
    [0.1, 0.3, 0.6],  # bee -> cat
    [0.25, 0.15, 0.6],  # bee -> cat
    [0.5, 0.1, 0.4],  # cat -> ant
    [0.6, 0.3, 0.1],  # cat -> ant
    [0.1, 0.1, 0.8],  # cat -> cat
]


def test_multiclass_metrics_match_the_hand_computed_confusion_matrix() -> None:
    result = evaluate("multiclass", MC_TRUE, MC_PROBA, classes=CLASSES)

    # Rows: true ant, bee, cat; columns: predicted ant, bee, cat (read off the comments above).
    matrix = [[3, 1, 0], [0, 1, 2], [2, 0, 1]]
    assert result.confusion_matrix == matrix
    assert result.classes == CLASSES and result.task == "multiclass"
    # Per class: precision = diagonal / column sum, recall = diagonal / row sum.
    precision = {"ant": 3 / (3 + 0 + 2), "bee": 1 / (1 + 1 + 0), "cat": 1 / (0 + 2 + 1)}
    recall = {"ant": 3 / (3 + 1 + 0), "bee": 1 / (0 + 1 + 2), "cat": 1 / (2 + 0 + 1)}
    support = {"ant": 4, "bee": 3, "cat": 3}
    f1 = {c: 2 * precision[c] * recall[c] / (precision[c] + recall[c]) for c in CLASSES}
    m = result.metrics
    assert m["accuracy"] == pytest.approx((3 + 1 + 1) / 10)
    assert m["macro_precision"] == pytest.approx(sum(precision.values()) / 3)
    assert m["macro_recall"] == pytest.approx(sum(recall.values()) / 3)
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert m["weighted_f1"] == pytest.approx(sum(support[c] * f1[c] for c in CLASSES) / 10)
    assert m["balanced_accuracy"] == pytest.approx(sum(recall.values()) / 3)
    # Log loss: the mean of -log(probability given to the true class), row by row.
    true_class_probability = [0.7, 0.6, 0.5, 0.3, 0.7, 0.3, 0.15, 0.4, 0.1, 0.8]
    assert m["log_loss"] == pytest.approx(-np.mean(np.log(true_class_probability)))
    for c in CLASSES:
        assert m[f"recall_{c}"] == pytest.approx(recall[c])
    assert m["n"] == 10
    assert set(m) == {*MULTICLASS_METRICS, "n", "recall_ant", "recall_bee", "recall_cat"}
    json.dumps(result.to_dict())


def test_multiclass_classes_default_to_the_sorted_labels_and_order_the_columns() -> None:
    # The same case with integer labels given out of order: 30 < 40 < 50 are ant, bee, cat.
    codes = {"ant": 30, "bee": 40, "cat": 50}
    labels = np.array([codes[c] for c in MC_TRUE])
    by_default = evaluate("multiclass", labels, MC_PROBA)
    assert by_default.classes == [30, 40, 50]
    assert by_default.metrics["recall_30"] == pytest.approx(3 / 4)
    assert by_default.metrics["macro_f1"] == pytest.approx(
        evaluate("multiclass", MC_TRUE, MC_PROBA, classes=CLASSES).metrics["macro_f1"]
    )
    # Naming the classes in another order relabels the columns: different predictions.
    swapped = evaluate("multiclass", labels, MC_PROBA, classes=[40, 30, 50])
    assert swapped.confusion_matrix != by_default.confusion_matrix


def test_a_class_absent_from_the_holdout_keeps_its_row_but_reports_no_recall() -> None:
    truth = ["ant", "ant", "bee", "bee"]
    probabilities = [[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]]
    result = evaluate("multiclass", truth, probabilities, classes=CLASSES)
    assert result.confusion_matrix == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    assert "recall_cat" not in result.metrics
    assert result.metrics["recall_ant"] == 0.5 and result.metrics["recall_bee"] == 1.0
    # cat was predicted once, so it counts in the macro averages (precision 0, recall 0 -> 0).
    f1_ant = 2 * 1.0 * 0.5 / 1.5  # precision 1/1, recall 1/2
    assert result.metrics["macro_f1"] == pytest.approx((f1_ant + 1.0 + 0.0) / 3)
    assert result.metrics["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)


@pytest.mark.parametrize(
    ("labels", "probabilities", "classes", "message"),
    [
        (["ant", "bee"], [[0.5, 0.5], [0.5, 0.5]], CLASSES, "2 columns for 3 classes"),
        (["ant", "dog"], [[1, 0, 0], [0, 1, 0]], CLASSES, r"labels \['dog'\]"),
        (["ant", "bee"], [[0.5, 0.4, 0.0], [0, 1, 0]], CLASSES, "row 0 sums to 0.9"),
        (["ant", "bee"], [[1.5, -0.5, 0], [0, 1, 0]], CLASSES, r"in \[0, 1\]"),
        (["ant", "bee"], [0.5, 0.5], CLASSES, "2-D"),
        (["ant"], [[1.0]], None, "at least 2 classes"),
    ],
)
def test_bad_multiclass_inputs_are_errors(
    labels: list[str], probabilities: object, classes: list[str] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate("multiclass", labels, probabilities, classes=classes)


class ShuffledClassifier:
    """An estimator whose ``classes_`` are not sorted, and that never saw the class ``bee``."""

    classes_ = np.array(["cat", "ant"])

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        p_cat = x["f"].to_numpy(dtype=float)
        return np.column_stack([p_cat, 1.0 - p_cat])


def test_an_estimators_classes_are_reordered_to_the_sorted_labels(tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    bundle = {"estimator": ShuffledClassifier(), "feature_columns": ["f"], "task": "multiclass"}
    joblib.dump({**bundle, "classes": ["ant", "bee", "cat"]}, path)
    frame = pd.DataFrame({"row_id": [1, 2], "f": [0.9, 0.25], "label": ["cat", "ant"]})

    probabilities = predict(load_model(path), frame, "multiclass")  # the bundle's classes

    np.testing.assert_allclose(probabilities, [[0.1, 0.0, 0.9], [0.75, 0.0, 0.25]])
    with pytest.raises(ValueError, match=r"predicts classes \['cat'\] that the features' labels"):
        predict(load_model(path), frame, "multiclass", classes=["ant", "bee"])
    with pytest.raises(ValueError, match="trained for task 'multiclass', not 'regression'"):
        predict(load_model(path), frame, "regression")


def test_a_scikit_learn_multiclass_model_goes_through_load_predict_evaluate(
    tmp_path: Path,
) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    centres = {"setosa": (0.0, 0.0), "versicolor": (3.0, 0.0), "virginica": (0.0, 3.0)}
    names = rng.choice(list(centres), size=240)
    xy = np.array([centres[n] for n in names]) + rng.normal(scale=1.0, size=(240, 2))
    frame = pd.DataFrame({"row_id": np.arange(240), "x": xy[:, 0], "y": xy[:, 1], "label": names})
    frame["split"] = np.where(frame["row_id"] % 4 == 0, "holdout", "train")
    train, holdout = frame[frame["split"] == "train"], frame[frame["split"] == "holdout"]
    # Fitted on the columns in another order than the table's, as a team's code may.
    estimator = LogisticRegression().fit(train[["y", "x"]], train["label"])
    path = tmp_path / "model.joblib"
    classes = class_labels(frame["label"])
    joblib.dump(
        {"estimator": estimator, "feature_columns": ["y", "x"], "task": "multiclass",
         "classes": classes},
        path,
    )  # fmt: skip

    probabilities = predict(load_model(path), holdout, "multiclass", classes)
    result = evaluate("multiclass", holdout["label"].to_numpy(), probabilities, classes=classes)

    assert classes == ["setosa", "versicolor", "virginica"]
    assert probabilities.shape == (len(holdout), 3)
    np.testing.assert_allclose(probabilities, estimator.predict_proba(holdout[["y", "x"]]))
    predicted = estimator.predict(holdout[["y", "x"]])
    assert result.metrics["accuracy"] == pytest.approx(np.mean(predicted == holdout["label"]))
    assert result.metrics["accuracy"] > 0.8
    assert sum(map(sum, result.confusion_matrix)) == len(holdout)
    assert result.confusion_matrix[0][0] == int(
        np.sum((holdout["label"] == "setosa").to_numpy() & (predicted == "setosa"))
    )


# --- regression, by hand ------------------------------------------------------------------


def test_regression_metrics_match_explicit_sums() -> None:
    actual, predicted = [1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.0, 5.0]
    result = evaluate("regression", actual, predicted)

    # Residuals (predicted - actual): 0.5, 0, -1, 1.
    squared = 0.25 + 0.0 + 1.0 + 1.0
    absolute = 0.5 + 0.0 + 1.0 + 1.0
    mean = (1 + 2 + 3 + 4) / 4
    total = (1 - mean) ** 2 + (2 - mean) ** 2 + (3 - mean) ** 2 + (4 - mean) ** 2
    m = result.metrics
    assert m["rmse"] == pytest.approx(math.sqrt(squared / 4))
    assert m["mae"] == pytest.approx(absolute / 4)
    assert m["r2"] == pytest.approx(1 - squared / total)
    assert m["max_error"] == pytest.approx(1.0)
    assert m["n"] == 4
    assert set(m) == {*REGRESSION_METRICS, "n"}
    assert result.points == [[1.0, 1.5], [2.0, 2.0], [3.0, 2.0], [4.0, 5.0]]
    assert sum(result.residual_counts) == 4
    assert len(result.residual_edges) == len(result.residual_counts) + 1
    assert result.residual_edges[0] == -1.0 and result.residual_edges[-1] == 1.0
    assert result.confusion_matrix == [] and result.decision_threshold is None
    json.dumps(result.to_dict())


def test_regression_points_are_downsampled_and_zero_targets_are_fine() -> None:
    actual = np.linspace(-5.0, 5.0, 4001)  # includes 0.0: nothing divides by the target
    assert 0.0 in actual
    result = evaluate("regression", actual, actual * 2)
    assert len(result.points) <= SCATTER_MAX_POINTS
    assert result.points[0] == [-5.0, -10.0] and result.points[-1] == [5.0, 10.0]
    assert result.metrics["max_error"] == pytest.approx(5.0)
    assert sum(result.residual_counts) == 4001


@pytest.mark.parametrize(
    ("actual", "predicted", "message"),
    [
        ([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], "constant"),
        ([1.0, 2.0], [1.0, float("nan")], "finite"),
        ([1.0, float("inf")], [1.0, 2.0], "finite"),
        ([1.0, 2.0, 3.0], [1.0, 2.0], "equal length"),
    ],
)
def test_bad_regression_inputs_are_errors(
    actual: list[float], predicted: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate("regression", actual, predicted)


def test_unknown_task_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        evaluate("ranking", [1, 2], [1, 2])


# --- a team's own code --------------------------------------------------------------------


@pytest.fixture
def team_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of a team's own code, importable by name as the team YAML would name it."""
    name = f"team_code_{uuid.uuid4().hex[:8]}"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / f"{name}.py").write_text(
        textwrap.dedent(
            '''
            from pathlib import Path

            import numpy as np


            def linear(artifact_path: Path, features):
                """A regression model stored as numpy weights in a folder."""
                weights = np.load(artifact_path / "weights.npy")
                bias = float(np.load(artifact_path / "bias.npy"))
                return features.to_numpy(dtype=float) @ weights + bias


            def two_columns(artifact_path: Path, features):
                """Binary probabilities as an (n, 2) array, from the first feature."""
                p = np.clip(features.iloc[:, 0].to_numpy(dtype=float), 0.0, 1.0)
                return np.column_stack([1.0 - p, p])


            def wrong_length(artifact_path: Path, features):
                return np.zeros(len(features) + 1)


            def within_one(y_true, y_pred):
                return float(np.mean(np.abs(np.asarray(y_true) - y_pred) <= 1.0))


            def top2_accuracy(y_true, y_pred):
                classes = sorted(set(y_true.tolist()))
                top2 = np.argsort(-y_pred, axis=1)[:, :2]
                truth = np.array([classes.index(v) for v in y_true.tolist()])
                return float(np.mean([t in row for t, row in zip(truth, top2)]))


            def broken(y_true, y_pred):
                raise RuntimeError("no GPU here")


            def words(y_true, y_pred):
                return "excellent"


            def rmse(y_true, y_pred):
                return 0.0
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    return name


def test_a_team_predict_function_scores_numpy_weights_in_a_folder(
    tmp_path: Path, team_module: str
) -> None:
    folder = tmp_path / "artifact"
    folder.mkdir()
    np.save(folder / "weights.npy", np.array([2.0, -1.0]))
    np.save(folder / "bias.npy", np.array(0.5))
    frame = pd.DataFrame(
        {"row_id": [7, 8, 9], "a": [1.0, 0.0, 2.0], "b": [0.0, 1.0, 1.0], "label": [3.0, 0.0, 2.0]}
    ).assign(split="holdout")

    model = load_model(folder, predict=f"{team_module}:linear")
    predictions = predict(model, frame, "regression")

    # 2a - b + 0.5 per row; row_id, label and split are not passed to the function.
    np.testing.assert_allclose(predictions, [2.5, -0.5, 3.5])
    result = evaluate("regression", frame["label"], predictions)
    residuals = [2.5 - 3.0, -0.5 - 0.0, 3.5 - 2.0]
    assert result.metrics["rmse"] == pytest.approx(math.sqrt(sum(r * r for r in residuals) / 3))
    assert not model.is_bundle


def test_a_team_predict_function_is_checked_for_shape_and_may_score_a_bundle(
    tmp_path: Path, team_module: str
) -> None:
    artifact = tmp_path / "model.joblib"
    joblib.dump({"estimator": None, "feature_columns": ["p"]}, artifact)
    frame = pd.DataFrame({"row_id": [1, 2, 3], "p": [0.2, 0.9, 1.4], "label": [0, 1, 1]})

    scores = predict(load_model(artifact, predict=f"{team_module}:two_columns"), frame, "binary")

    np.testing.assert_allclose(scores, [0.2, 0.9, 1.0])  # column 1 of the (n, 2) output
    with pytest.raises(
        ValueError, match=r"wrong_length gave shape \(4,\); regression needs \(3,\)"
    ):
        predict(load_model(artifact, predict=f"{team_module}:wrong_length"), frame, "regression")
    with pytest.raises(ValueError, match=r"gave shape \(3, 2\); multiclass needs \(3, 3\)"):
        predict(
            load_model(artifact, predict=f"{team_module}:two_columns"),
            frame,
            "multiclass",
            classes=[0, 1, 2],
        )


def test_a_predict_reference_that_does_not_resolve_names_module_and_attribute(
    tmp_path: Path, team_module: str
) -> None:
    artifact = tmp_path / "weights.bin"
    artifact.write_bytes(b"\0")
    with pytest.raises(ImportError, match="no_such_team_module"):
        load_model(artifact, predict="no_such_team_module:predict")
    with pytest.raises(ImportError, match=f"module '{team_module}' has no attribute 'nothing'"):
        load_model(artifact, predict=f"{team_module}:nothing")
    with pytest.raises(ValueError, match=r"is not a 'package\.module:function' reference"):
        load_model(artifact, predict="just_a_name")


def test_extra_metric_functions_are_added_under_their_names(team_module: str) -> None:
    functions = metric_functions([f"{team_module}:within_one", f"{team_module}:top2_accuracy"])
    assert list(functions) == ["within_one", "top2_accuracy"]

    regression = evaluate(
        "regression",
        [1.0, 2.0, 3.0, 10.0],
        [1.5, 4.0, 3.0, 9.2],
        extra_metrics={"within_one": functions["within_one"]},
    )
    # |errors| 0.5, 2.0, 0.0, 0.8: three of four within 1.
    assert regression.metrics["within_one"] == pytest.approx(3 / 4)

    multiclass = evaluate(
        "multiclass",
        MC_TRUE,
        MC_PROBA,
        classes=CLASSES,
        extra_metrics={"top2_accuracy": functions["top2_accuracy"]},
    )
    # The true class is among the two largest probabilities in all rows but the 7th (bee at
    # 0.15, below cat 0.6 and ant 0.25) and the 9th (cat at 0.1, below ant 0.6 and bee 0.3).
    assert multiclass.metrics["top2_accuracy"] == pytest.approx(8 / 10)


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("broken", "metric function 'broken' failed: RuntimeError: no GPU here"),
        ("words", "metric function 'words' returned 'excellent', not a number"),
        ("rmse", "metric function 'rmse' has the name of a built-in metric"),
    ],
)
def test_a_metric_function_that_misbehaves_is_a_clear_error(
    team_module: str, function: str, message: str
) -> None:
    functions = metric_functions([f"{team_module}:{function}"])
    with pytest.raises(ValueError, match=message):
        evaluate("regression", [1.0, 2.0], [1.0, 2.0], extra_metrics=functions)


def test_thresholds_gate_any_metric_by_the_name_it_is_reported_under() -> None:
    metrics = {"rmse": 0.8, "within_one": 0.75, "train/accuracy": 0.99, "recall_cat": 0.4}
    thresholds = {
        "max_rmse": 1.0,
        "min_within_one": 0.9,
        "min_train/accuracy": 0.95,
        "min_recall_cat": 0.5,
    }
    assert check_thresholds(metrics, thresholds) == [
        "within_one 0.75 < min 0.9",
        "recall_cat 0.4 < min 0.5",
    ]
    with pytest.raises(ValueError, match=r"'train/loss', which was not computed \(computed: "):
        check_thresholds(metrics, {"max_train/loss": 0.1})


def test_check_predictions_per_task() -> None:
    check_predictions("binary", [0.0, 1.0])
    check_predictions("multiclass", [[0.2, 0.8], [1.0, 0.0]])
    check_predictions("regression", [-1e9, 3.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_predictions("binary", [0.5, 1.2])
    with pytest.raises(ValueError, match="sum to 1"):
        check_predictions("multiclass", [[0.2, 0.2]])
    with pytest.raises(ValueError, match="finite"):
        check_predictions("regression", [float("nan")])


def test_class_labels_are_sorted_plain_values() -> None:
    assert class_labels(pd.Series([3, 1, 2, 1], dtype="int8")) == [1, 2, 3]
    assert class_labels(pd.Series(["b", "a", "c"])) == ["a", "b", "c"]
    assert all(type(v) is int for v in class_labels(np.array([2, 1], dtype=np.int64)))
    with pytest.raises(ValueError, match="missing"):
        class_labels(pd.Series(["a", None]))


# --- pictures -----------------------------------------------------------------------------


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", png[16:24])  # IHDR comes first
    return width, height


@pytest.mark.parametrize(
    ("result", "size"),
    [
        (evaluate("binary", [0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9]), (900, 400)),
        (evaluate("multiclass", MC_TRUE, MC_PROBA, classes=CLASSES), (1000, 450)),
        (
            evaluate(
                "multiclass",
                [str(i % 10) for i in range(50)],
                np.eye(10)[[(i * 7) % 10 for i in range(50)]],
            ),
            (1000, 450),
        ),
        (
            evaluate("regression", np.arange(50.0), np.arange(50.0) + np.sin(np.arange(50))),
            (900, 400),
        ),
    ],
    ids=["binary", "multiclass-3", "multiclass-10", "regression"],
)
def test_each_task_renders_a_png(result: Evaluation, size: tuple[int, int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    png = render_evaluation_png(result, f"team/model — {result.task}")
    assert plt.get_fignums() == before  # no pyplot figure was made
    assert _png_size(png) == size
    assert len(png) > 10_000


# --- the asset ------------------------------------------------------------------------------


def test_the_evaluation_asset_scores_a_multiclass_folder_model_and_gates_on_any_metric(
    tmp_path: Path, team_module: str, ml_home: Path
) -> None:
    import dagster as dg

    from ml_assets.assets.common import ModelContext
    from ml_assets.assets.evaluation import THRESHOLD_CHECK, build_evaluation_asset
    from ml_assets.teams.spec import TeamSpec

    # A "model" that is a folder the team's predict function reads: here, fixed probabilities
    # per row, so the metrics are the hand-computed case above.
    (tmp_path / "code" / f"{team_module}_predict.py").write_text(
        "import numpy as np\n\n\n"
        "def table(artifact_path, features):\n"
        "    return np.load(artifact_path / 'p.npy')[features['i'].to_numpy()]\n"
    )
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    np.save(artifact / "p.npy", np.array(MC_PROBA))
    features = pd.DataFrame(
        {"row_id": range(10), "i": range(10), "label": MC_TRUE, "split": "holdout"}
    )
    features_path = tmp_path / "features.parquet"
    features.to_parquet(features_path)

    def team(thresholds: dict[str, float]) -> TeamSpec:
        return TeamSpec.model_validate(
            {
                "team": "zoo",
                "owners": ["zoo@example.com"],
                "models": {
                    "species": {
                        "task": "multiclass",
                        "dataset": {"asset": "platform/raw_species"},
                        "features": {},
                        "trainer": {"function": "logistic_regression"},
                        "predict": f"{team_module}_predict:table",
                        "evaluation": {
                            "metrics": [f"{team_module}:top2_accuracy"],
                            "thresholds": thresholds,
                        },
                    }
                },
            }
        )

    instance = dg.DagsterInstance.ephemeral()  # in memory: no database to create
    model = ModelContext(team({}), "species")
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=model.keys.trained,
            metadata={
                "job_id": "job-1",
                "artifact": dg.MetadataValue.path(str(artifact)),
                "features_uri": dg.MetadataValue.path(str(features_path)),
                "train/accuracy": 0.97,
                "train/loss": 0.12,
            },
        )
    )

    def run(thresholds: dict[str, float]) -> dg.ExecuteInProcessResult:
        asset = build_evaluation_asset(ModelContext(team(thresholds), "species"))
        return dg.materialize([asset], instance=instance, raise_on_error=False)

    passed = run({"min_macro_f1": 0.4, "min_top2_accuracy": 0.8, "min_train/accuracy": 0.95})
    assert passed.success
    [materialization] = passed.asset_materializations_for_node("zoo__species_evaluation")
    values = {k: v.value for k, v in materialization.metadata.items()}
    assert values["task"] == "multiclass" and values["passed"] is True
    reference = evaluate("multiclass", MC_TRUE, MC_PROBA, classes=CLASSES).metrics
    assert values["macro_f1"] == pytest.approx(reference["macro_f1"])
    assert values["top2_accuracy"] == pytest.approx(0.8)
    assert "train/accuracy" not in values  # kept apart from the holdout metrics
    assert values["training_metrics"] == {"train/accuracy": 0.97, "train/loss": 0.12}
    assert values["classes"] == CLASSES
    assert str(values["plot"]).startswith("![Confusion matrix and recall per class](data:image")
    table = str(values["confusion_matrix"]).splitlines()
    assert table[0] == "| | predicted ant | predicted bee | predicted cat |"
    assert table[2:] == [
        "| **actual ant** | 3 | 1 | 0 |",
        "| **actual bee** | 0 | 1 | 2 |",
        "| **actual cat** | 2 | 0 | 1 |",
    ]
    [check] = passed.get_asset_check_evaluations()
    assert check.check_name == THRESHOLD_CHECK and check.passed
    assert check.metadata["train/accuracy"].value == 0.97

    failed = run({"max_train/loss": 0.1, "min_recall_ant": 0.8})
    [check] = failed.get_asset_check_evaluations()
    assert not check.passed
    assert check.description == "train/loss 0.12 > max 0.1; recall_ant 0.75 < min 0.8"

    missing = run({"min_train/f1": 0.5})
    assert not missing.success
    [failure] = [e for e in missing.all_events if e.is_step_failure]
    assert "cannot check the thresholds" in str(failure.event_specific_data)
    assert "'train/f1', which was not computed" in str(failure.event_specific_data)
