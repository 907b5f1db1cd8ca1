"""The shipped teams' feature functions on the platform's raw data, and the library's part of a
features table (``ml_assets.assets.data.build_feature_table``): standard label and id names,
the label checked for the task, and the hash split.

Each team function is called as the features asset calls it, ``function(table, params)``, and
then through ``build_feature_table`` with the team's own YAML settings.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ml_assets.assets.data import build_feature_table
from ml_assets.features import FEATURE_COLUMNS_EXCLUDED, assign_split, feature_columns
from ml_assets.platform_data.sources import (
    DIGIT_PIXEL_COLUMNS,
    MERCHANT_CATEGORIES,
    load_breast_cancer,
    load_digits,
    write_card_transactions,
)
from ml_assets.teams.clinical.features import measurements
from ml_assets.teams.fraud.features import transaction_risk
from ml_assets.teams.spec import FeaturesSpec, ModelSpec, load_team_spec
from ml_assets.teams.vision.features import digit_pixels
from ml_assets.teams.wine.data import load_wines
from ml_assets.teams.wine.features import chemistry

TEAMS = Path(__file__).resolve().parents[2] / "ml_assets" / "teams"


def _model(team: str, model: str) -> ModelSpec:
    return load_team_spec(TEAMS / team / "team.yaml").models[model]


def _table(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)


def _built(team: str, model: str, raw: pd.DataFrame) -> pd.DataFrame:
    """``raw`` through the team's feature function and the library, as the features asset does."""
    spec = _model(team, model)
    return build_feature_table(spec.features, spec.task, _table(raw)).to_pandas()


# --- clinical: measurements ---------------------------------------------------------------


def test_clinical_measurements_keeps_the_measurements_as_floats() -> None:
    raw = load_breast_cancer()
    features = measurements(raw, {})
    measured = [c for c in raw.columns if c not in ("row_id", "label")]
    assert len(measured) == 30
    assert list(features.columns) == ["row_id", *measured, "label"]
    assert all(features[c].dtype == np.float64 for c in measured)
    assert features["row_id"].dtype == np.int64 and features["label"].dtype == np.int8
    np.testing.assert_array_equal(features[measured].to_numpy(), raw[measured].to_numpy())
    assert features["label"].tolist() == raw["label"].tolist()


def test_clinical_features_table_has_the_split_of_the_team_yaml() -> None:
    raw = load_breast_cancer()
    spec = _model("clinical", "tumor_classifier").features
    features = _built("clinical", "tumor_classifier", raw)
    measured = [c for c in raw.columns if c not in ("row_id", "label")]
    assert list(features.columns) == ["row_id", *measured, "label", "split"]
    assert feature_columns(features) == measured
    assert features["label"].dtype == np.int8
    expected = assign_split(raw["row_id"], spec.holdout_fraction, spec.seed)
    assert features["split"].astype(str).tolist() == expected.tolist()


# --- vision: digit_pixels -----------------------------------------------------------------


def test_digit_pixels_scales_pixels_to_unit_range() -> None:
    raw = load_digits()
    features = digit_pixels(raw, {})
    assert list(features.columns) == ["row_id", *DIGIT_PIXEL_COLUMNS, "label"]
    assert all(features[c].dtype == np.float32 for c in DIGIT_PIXEL_COLUMNS)
    pixels = features[list(DIGIT_PIXEL_COLUMNS)].to_numpy()
    assert pixels.min() == 0.0 and pixels.max() == 1.0
    np.testing.assert_allclose(pixels * 16, raw[list(DIGIT_PIXEL_COLUMNS)].to_numpy(), atol=1e-5)
    assert features["row_id"].dtype == np.int64 and features["label"].dtype == np.int8
    assert features["row_id"].tolist() == raw["row_id"].tolist()
    assert features["label"].tolist() == raw["label"].tolist()


def test_digit_features_table_never_uses_the_digit_and_splits_as_configured() -> None:
    raw = load_digits()
    spec = _model("vision", "digit_classifier").features
    features = _built("vision", "digit_classifier", raw)
    assert list(features.columns) == ["row_id", *DIGIT_PIXEL_COLUMNS, "label", "split"]
    assert feature_columns(features) == list(DIGIT_PIXEL_COLUMNS)  # the digit is never a feature
    expected = assign_split(raw["row_id"], spec.holdout_fraction, spec.seed)
    assert features["split"].astype(str).tolist() == expected.tolist()
    assert 0.15 < (features["split"] == "holdout").mean() < 0.25


def test_digit_pixels_positive_from_param_moves_the_label() -> None:
    raw = load_digits()
    features = digit_pixels(raw, {"positive_from": 3})
    assert features["label"].tolist() == (raw["digit"] >= 3).astype(np.int8).tolist()


def test_digit_pixels_scale_does_not_depend_on_the_other_rows() -> None:
    raw = load_digits()
    faint = raw[raw[list(DIGIT_PIXEL_COLUMNS)].max(axis=1) < 16].iloc[:5]
    assert len(faint) == 5
    alone = digit_pixels(faint, {})
    together = digit_pixels(raw, {}).set_index("row_id").loc[faint["row_id"]]
    np.testing.assert_array_equal(
        alone[list(DIGIT_PIXEL_COLUMNS)].to_numpy(), together[list(DIGIT_PIXEL_COLUMNS)].to_numpy()
    )


@pytest.mark.parametrize("bad", [17, -1, np.nan])
def test_digit_pixels_rejects_values_outside_zero_to_sixteen(bad: float) -> None:
    raw = load_digits().iloc[:10].astype({"pixel_2_3": np.float64})
    raw.loc[raw.index[4], "pixel_2_3"] = bad
    with pytest.raises(ValueError, match=r"digit pixels must lie in 0\.\.16"):
        digit_pixels(raw, {})


def test_digit_pixels_names_a_missing_pixel() -> None:
    with pytest.raises(KeyError, match="pixel_7_7"):
        digit_pixels(load_digits().drop(columns=["pixel_7_7"]), {})


# --- fraud: transaction_risk --------------------------------------------------------------


def _card_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transaction_id": np.array([101, 102, 103, 104], dtype=np.int64),
            "customer_id": np.array([1, 1, 1, 2], dtype=np.int64),
            "timestamp": pd.to_datetime(
                ["2025-01-01 02:30", "2025-01-01 14:00", "2025-01-02 05:59", "2025-01-02 06:00"]
            ).astype("datetime64[ms]"),
            "amount": [10.0, 30.0, 20.0, 100.0],
            "merchant_category": ["grocery", "jewelry", "not_a_category", "grocery"],
            "country": ["US", "US", "FR", "GB"],
            "is_foreign": [False, False, True, False],
            "card_present": [True, False, True, True],
            "distance_from_home_km": [0.0, 12.0, 400.0, 3.0],
            "customer_age": np.array([30, 30, 30, 71], dtype=np.int16),
            "is_fraud": [False, True, False, False],
        }
    )


def test_transaction_risk_values_by_hand() -> None:
    features = transaction_risk(_card_rows(), {})
    assert features.columns[0] == "transaction_id" and features.columns[-1] == "is_fraud"
    assert features["transaction_id"].tolist() == [101, 102, 103, 104]
    assert features["is_fraud"].dtype == np.int8
    assert features["is_fraud"].tolist() == [0, 1, 0, 0]
    assert features["hour_of_day"].tolist() == [2, 14, 5, 6]
    assert features["is_night"].tolist() == [1, 0, 1, 0]
    assert features["is_foreign"].tolist() == [0, 0, 1, 0]
    assert features["card_present"].tolist() == [1, 0, 1, 1]
    assert features["customer_txn_count"].tolist() == [3, 3, 3, 1]
    np.testing.assert_allclose(
        features["log_amount_vs_customer_median"], np.log([10 / 20, 30 / 20, 1.0, 1.0]), rtol=1e-6
    )
    np.testing.assert_allclose(
        features["log_amount"], np.log1p([10.0, 30.0, 20.0, 100.0]), rtol=1e-6
    )
    np.testing.assert_allclose(
        features["log_distance_km"], np.log1p([0.0, 12.0, 400.0, 3.0]), rtol=1e-6
    )
    categories = features[[f"category_{c}" for c in MERCHANT_CATEGORIES]]
    assert categories.sum(axis=1).tolist() == [1, 1, 0, 1]  # unknown category: all zeros
    assert features["category_grocery"].tolist() == [1, 0, 0, 1]
    assert features["category_jewelry"].tolist() == [0, 1, 0, 0]


def test_transaction_risk_table_has_the_standard_label_and_id() -> None:
    features = _built("fraud", "fraud_detector", _card_rows())
    assert features.columns[0] == "row_id" and list(features.columns[-2:]) == ["label", "split"]
    assert "is_fraud" not in features.columns and "transaction_id" not in features.columns
    assert features["row_id"].tolist() == [101, 102, 103, 104]
    assert features["label"].tolist() == [0, 1, 0, 0] and features["label"].dtype == np.int8


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    path = tmp_path_factory.mktemp("card") / "card.parquet"
    write_card_transactions(path, 50_000, seed=7)
    return pd.read_parquet(path)


def test_transaction_risk_on_a_generated_table(card: pd.DataFrame) -> None:
    raw = card.iloc[:5_000]
    features = _built("fraud", "fraud_detector", raw)
    columns = feature_columns(features)
    assert len(features) == 5_000
    assert set(FEATURE_COLUMNS_EXCLUDED).isdisjoint(columns)
    assert all(features[c].dtype.kind in "iuf" for c in columns)
    assert not features[columns].isna().any().any()
    assert features["label"].sum() == raw["is_fraud"].sum()
    spec = _model("fraud", "fraud_detector").features
    expected = assign_split(raw["transaction_id"], spec.holdout_fraction, spec.seed)
    assert features["split"].astype(str).tolist() == expected.tolist()
    # The column set is fixed, whatever categories this particular file happens to contain.
    subset = _built("fraud", "fraud_detector", raw[raw["merchant_category"] == "grocery"])
    assert feature_columns(subset) == columns


def test_fraud_label_is_learnable_but_not_trivial(card: pd.DataFrame) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    spec = _model("fraud", "fraud_detector")
    features = build_feature_table(
        spec.features.model_copy(update={"holdout_fraction": 0.3}), spec.task, _table(card)
    ).to_pandas()
    train = features[features["split"] == "train"]
    holdout = features[features["split"] == "holdout"]
    columns = feature_columns(features)
    model = HistGradientBoostingClassifier(random_state=0).fit(train[columns], train["label"])
    auc = roc_auc_score(holdout["label"], model.predict_proba(holdout[columns])[:, 1])
    assert 0.8 < auc < 0.99


def test_transaction_risk_names_a_missing_raw_column() -> None:
    with pytest.raises(KeyError, match="customer_id"):
        transaction_risk(_card_rows().drop(columns=["customer_id"]), {})


# --- wine: load_wines and chemistry (multiclass, string labels) ---------------------------


def test_wine_chemistry_logs_the_named_columns_and_adds_two_ratios() -> None:
    raw = load_wines()
    assert list(raw.columns[:2]) == ["wine_id", "alcohol"] and raw.columns[-1] == "cultivar"
    features = chemistry(raw, {"log_columns": ["proline"]})
    assert "proline" not in features.columns
    np.testing.assert_allclose(features["log_proline"], np.log1p(raw["proline"]))
    np.testing.assert_allclose(
        features["flavanoid_share"], raw["flavanoids"] / raw["total_phenols"]
    )
    np.testing.assert_allclose(features["colour_per_hue"], raw["color_intensity"] / raw["hue"])
    assert features["cultivar"].tolist() == raw["cultivar"].tolist()
    assert "log_magnesium" not in chemistry(raw, {}).columns


def test_wine_features_table_is_multiclass_with_the_cultivar_as_label() -> None:
    raw = load_wines()
    spec = _model("wine", "cultivar_classifier")
    features = _built("wine", "cultivar_classifier", raw)
    assert len(features) == 178
    assert features["row_id"].tolist() == raw["wine_id"].tolist()
    assert sorted(features["label"].unique()) == ["cultivar_0", "cultivar_1", "cultivar_2"]
    columns = feature_columns(features)
    assert "cultivar" not in columns and "wine_id" not in columns
    for name in spec.features.params["log_columns"]:
        assert name not in columns and f"log_{name}" in columns
    assert {"flavanoid_share", "colour_per_hue"} <= set(columns)
    assert all(features[c].dtype.kind == "f" for c in columns)


# --- the library's part: build_feature_table ----------------------------------------------


def _rows(**columns: Any) -> pa.Table:
    base: dict[str, Any] = {"key": pa.array([10, 11, 12, 13], pa.int64()), "x": [0.5, 1.5, 2, 3]}
    base.update(columns)
    return pa.table({name: value for name, value in base.items() if value is not None})


def test_renames_label_and_id_and_appends_the_split() -> None:
    spec = FeaturesSpec(label="target", id_column="key", holdout_fraction=0.5, seed=1)
    table = build_feature_table(spec, "binary", _rows(target=[True, False, True, False]))
    assert table.column_names == ["row_id", "x", "label", "split"]
    assert table.column("row_id").to_pylist() == [10, 11, 12, 13]
    assert table.column("label").type == pa.int8()
    assert table.column("label").to_pylist() == [1, 0, 1, 0]
    expected = assign_split(pd.Series([10, 11, 12, 13], dtype=np.int64), 0.5, seed=1)
    assert table.column("split").to_pylist() == expected.tolist()


def test_the_standard_names_pass_through_and_columns_are_reordered() -> None:
    rows = pa.table({"label": [0, 1], "a": [1.0, 2.0], "row_id": pa.array([1, 2], pa.int64())})
    table = build_feature_table(FeaturesSpec(), "binary", rows)
    assert table.column_names == ["row_id", "a", "label", "split"]


def test_regression_label_becomes_float64() -> None:
    spec = FeaturesSpec(label="y", id_column="key")
    table = build_feature_table(spec, "regression", _rows(y=pa.array([1, 2, 3, 4], pa.int32())))
    assert table.column("label").type == pa.float64()


@pytest.mark.parametrize("role", ["label", "id_column"])
def test_a_missing_column_names_the_yaml_field(role: str) -> None:
    spec = FeaturesSpec(label="target", id_column="key")
    rows = _rows(target=[0, 1, 0, 1], **({"key": None} if role == "id_column" else {}))
    if role == "label":
        rows = rows.drop_columns(["target"])
    missing = "target" if role == "label" else "key"
    with pytest.raises(ValueError, match=rf"features\.{role} in the team YAML") as raised:
        build_feature_table(spec, "binary", rows)
    assert repr(missing) in str(raised.value)
    assert "its columns:" in str(raised.value)


def test_a_binary_label_outside_zero_and_one_is_refused() -> None:
    spec = FeaturesSpec(label="target", id_column="key")
    with pytest.raises(ValueError, match=r"binary task needs labels 0/1.*\[0, 1, 2\]"):
        build_feature_table(spec, "binary", _rows(target=[0, 1, 2, 1]))


def test_a_string_regression_label_is_refused() -> None:
    spec = FeaturesSpec(label="target", id_column="key")
    with pytest.raises(ValueError, match="regression task needs a numeric label"):
        build_feature_table(spec, "regression", _rows(target=["1", "2", "3", "4"]))


def test_a_multiclass_label_with_one_class_is_refused() -> None:
    spec = FeaturesSpec(label="target", id_column="key")
    with pytest.raises(ValueError, match="2 or more classes"):
        build_feature_table(spec, "multiclass", _rows(target=["a", "a", "a", "a"]))


def test_a_label_with_nulls_is_refused() -> None:
    spec = FeaturesSpec(label="target", id_column="key")
    with pytest.raises(ValueError, match="1 nulls"):
        build_feature_table(spec, "binary", _rows(target=[0, 1, None, 1]))


def test_a_table_that_already_has_a_split_is_refused() -> None:
    spec = FeaturesSpec(label="target", id_column="key")
    rows = _rows(target=[0, 1, 0, 1], split=["train"] * 4)
    with pytest.raises(ValueError, match="'split' column"):
        build_feature_table(spec, "binary", rows)


def test_a_table_with_both_the_team_label_and_label_is_refused() -> None:
    spec = FeaturesSpec(label="is_fraud", id_column="key")
    rows = _rows(is_fraud=[0, 1, 0, 1], label=[1, 1, 0, 0])
    with pytest.raises(ValueError, match="both 'is_fraud' and 'label'"):
        build_feature_table(spec, "binary", rows)


def test_a_table_with_both_the_team_id_and_row_id_is_refused() -> None:
    spec = FeaturesSpec(label="target", id_column="key")
    rows = _rows(target=[0, 1, 0, 1], row_id=pa.array([1, 2, 3, 4], pa.int64()))
    with pytest.raises(ValueError, match="both 'key' and 'row_id'"):
        build_feature_table(spec, "binary", rows)


@pytest.fixture
def team_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A team's own feature module on sys.path, as a team package would be installed."""
    name = "team_code_for_feature_tests"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            def passthrough(table, params):
                kind = type(table).__module__.split(".")[0]
                if kind != params["expect"]:
                    raise TypeError(f"got a {kind} table, expected {params['expect']}")
                return table

            def not_a_table(table, params):
                return [1, 2, 3]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


@pytest.mark.parametrize("table_format", ["pandas", "polars", "pyarrow"])
def test_the_feature_function_gets_the_table_format_it_asked_for(
    team_module: str, table_format: str
) -> None:
    spec = FeaturesSpec(
        function=f"{team_module}:passthrough",
        params={"expect": table_format},
        table_format=table_format,  # type: ignore[arg-type]
        label="target",
        id_column="key",
    )
    table = build_feature_table(spec, "binary", _rows(target=[0, 1, 0, 1]))
    assert table.column_names == ["row_id", "x", "label", "split"]
    assert table.column("x").to_pylist() == [0.5, 1.5, 2.0, 3.0]


def test_a_feature_function_returning_no_table_is_named(team_module: str) -> None:
    spec = FeaturesSpec(function=f"{team_module}:not_a_table", label="target", id_column="key")
    with pytest.raises(TypeError, match=rf"feature function {team_module}:not_a_table returned"):
        build_feature_table(spec, "binary", _rows(target=[0, 1, 0, 1]))
