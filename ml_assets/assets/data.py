"""Dataset and features assets: a team's snapshot of platform data, then its model features.

Both are written as Parquet, one file per run, and versioned by the content hash of that file,
so a training job that reads a version keeps reading exactly that version.
"""

import dagster as dg

from ml_assets import storage
from ml_assets.assets.common import ModelContext, code_version, latest_metadata, raw_key
from ml_assets.datasets import file_sha256

DATASET_LOGIC_VERSION = "1"
FEATURES_LOGIC_VERSION = "1"


def build_data_assets(model: ModelContext) -> list[dg.AssetsDefinition]:
    """The ``<model>_dataset`` and ``<model>_features`` assets of one model."""
    spec, keys = model.spec, model.keys
    source_key = raw_key(spec.dataset.source)

    @dg.asset(
        key=keys.dataset,
        deps=[source_key],
        description=f"The {model.name} team's snapshot of {source_key.to_user_string()}.",
        code_version=code_version(DATASET_LOGIC_VERSION, spec.dataset.model_dump()),
        **model.asset_settings("parquet", "pyarrow"),
    )
    def dataset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        import pyarrow.parquet as pq

        raw = latest_metadata(context.instance, source_key)
        table = pq.read_table(raw["path"])
        if spec.dataset.max_rows is not None and table.num_rows > spec.dataset.max_rows:
            table = table.slice(0, spec.dataset.max_rows)
        path = storage.asset_file(storage.home(context.instance), keys.dataset.path, context.run_id)
        pq.write_table(table, path)
        version = file_sha256(path)
        context.log.info(f"wrote {table.num_rows} rows to {path}")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(version),
            metadata={
                "path": dg.MetadataValue.path(str(path)),
                "dagster/row_count": table.num_rows,
                "dagster/column_schema": _schema(table.schema),
                "data_version": version,
                "source_data_version": str(raw.get("data_version", "")),
            },
        )

    @dg.asset(
        key=keys.features,
        deps=[keys.dataset],
        description=f"Model features ({spec.features.feature_set}) with a train/holdout split.",
        code_version=code_version(FEATURES_LOGIC_VERSION, spec.features.model_dump()),
        **model.asset_settings("parquet", "pandas"),
    )
    def features(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        import pandas as pd
        import pyarrow as pa

        from ml_assets.features import build_features

        upstream = latest_metadata(context.instance, keys.dataset, prefer_run=context.run_id)
        frame = build_features(
            spec.features.feature_set,
            pd.read_parquet(upstream["path"]),
            holdout_fraction=spec.features.holdout_fraction,
            seed=spec.features.seed,
        )
        path = storage.asset_file(
            storage.home(context.instance), keys.features.path, context.run_id
        )
        frame.to_parquet(path, index=False)
        version = file_sha256(path)
        holdout = int((frame["split"] == "holdout").sum())
        return dg.MaterializeResult(
            data_version=dg.DataVersion(version),
            metadata={
                "path": dg.MetadataValue.path(str(path)),
                "dagster/row_count": len(frame),
                "dagster/column_schema": _schema(
                    pa.Schema.from_pandas(frame, preserve_index=False)
                ),
                "data_version": version,
                "dataset_data_version": str(upstream["data_version"]),
                "holdout_rows": holdout,
                "positive_rate": float(frame["label"].mean()),
            },
        )

    return [dataset, features]


def _schema(schema: object) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name=f.name, type=str(f.type)) for f in schema]  # type: ignore[attr-defined]
    )
