"""Dataset and features assets: a team's rows, then its model features with a train/holdout split.

The team's own functions do the data work; the library moves tables through Arrow, writes one
Parquet file per run, and versions each file by the hash of its bytes, so a training job that
reads a version keeps reading exactly that version.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg

from ml_assets import storage
from ml_assets.assets.common import ModelContext, code_version, latest_metadata
from ml_assets.teams.spec import FeaturesSpec, Task

if TYPE_CHECKING:
    import pyarrow as pa

DATASET_LOGIC_VERSION = "2"
FEATURES_LOGIC_VERSION = "2"
LABEL, ROW_ID, SPLIT = "label", "row_id", "split"


def build_data_assets(model: ModelContext) -> list[dg.AssetsDefinition]:
    """The ``<model>_dataset`` and ``<model>_features`` assets of one model."""
    spec, keys = model.spec, model.keys
    source = spec.dataset
    upstream = dg.AssetKey(source.asset_path) if source.asset else None
    described = f"asset {source.asset}" if source.asset else f"function {source.function}"

    @dg.asset(
        key=keys.dataset,
        deps=[upstream] if upstream else [],
        description=f"The {model.name} rows, from {described}.",
        code_version=code_version(DATASET_LOGIC_VERSION, source.model_dump()),
        **model.asset_settings("parquet", "pyarrow"),
    )
    def dataset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        from ml_assets.references import resolve
        from ml_assets.tables import read_parquet, to_arrow

        extra: dict[str, Any] = {}
        if upstream is not None:
            raw = latest_metadata(context.instance, upstream)
            if "path" not in raw:
                raise dg.Failure(
                    f"{source.asset}'s latest materialization has no 'path' metadata naming "
                    "its Parquet file, so it cannot be a dataset"
                )
            table = read_parquet(str(raw["path"]))
            extra["source_data_version"] = str(raw.get("data_version", ""))
        else:
            assert source.function is not None
            table = to_arrow(
                resolve(source.function)(**source.params), f"dataset function {source.function}"
            )
        if source.max_rows is not None and table.num_rows > source.max_rows:
            table = table.slice(0, source.max_rows)
        return _written(context, keys.dataset.path, table, extra)

    @dg.asset(
        key=keys.features,
        deps=[keys.dataset],
        description=(
            f"Model features from {spec.features.function or 'the dataset as it is'}, with the "
            f"label {spec.features.label!r} and a train/holdout split."
        ),
        code_version=code_version(FEATURES_LOGIC_VERSION, spec.features.model_dump(), spec.task),
        **model.asset_settings("parquet", spec.features.table_format),
    )
    def features(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        from ml_assets.tables import read_parquet

        upstream_facts = latest_metadata(context.instance, keys.dataset, prefer_run=context.run_id)
        table = build_feature_table(
            spec.features, spec.task, read_parquet(str(upstream_facts["path"]))
        )
        extra = {
            "dataset_data_version": str(upstream_facts["data_version"]),
            **label_summary(table, spec.task),
        }
        return _written(context, keys.features.path, table, extra)

    return [dataset, features]


def build_feature_table(features: FeaturesSpec, task: Task, rows: "pa.Table") -> "pa.Table":
    """The team's feature function applied to ``rows``, then the library's part: the label and
    id columns under their standard names (``label``, ``row_id``), the label checked for the
    task, and the deterministic ``split`` column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ml_assets.references import resolve
    from ml_assets.tables import to_arrow, with_split

    table = rows
    if features.function is not None:
        where = f"feature function {features.function}"
        table = to_arrow(resolve(features.function)(_as(rows, features), features.params), where)
    else:
        where = "the dataset"
    renames = {features.label: LABEL, features.id_column: ROW_ID}
    for name, role in ((features.label, "label"), (features.id_column, "id_column")):
        if name not in table.column_names:
            raise ValueError(
                f"{where} returned no {role} column {name!r} (features.{role} in the team "
                f"YAML); its columns: {', '.join(table.column_names)}"
            )
    for name, standard in renames.items():
        if name != standard and standard in table.column_names:
            raise ValueError(
                f"{where} returned both {name!r} and {standard!r}; the library stores "
                f"{name!r} as {standard!r}, so rename or drop the other column"
            )
    table = table.rename_columns([renames.get(name, name) for name in table.column_names])
    if SPLIT in table.column_names:
        raise ValueError(f"{where} returned a 'split' column; the library adds the split itself")
    label = table.column(LABEL)
    if label.null_count:
        raise ValueError(f"{where}: the label {features.label!r} has {label.null_count} nulls")
    if task == "binary":
        values = set(pc.unique(label).to_pylist())
        if not values <= {0, 1}:  # True and False compare equal to 1 and 0
            raise ValueError(
                f"a binary task needs labels 0/1, but {features.label!r} holds "
                f"{sorted(values, key=str)[:10]}"
            )
        label = pc.cast(label, pa.int8())
    elif task == "multiclass":
        if len(pc.unique(label)) < 2:
            raise ValueError(f"a multiclass task needs 2 or more classes in {features.label!r}")
    elif not pa.types.is_integer(label.type) and not pa.types.is_floating(label.type):
        raise ValueError(
            f"a regression task needs a numeric label; {features.label!r} is {label.type}"
        )
    else:
        label = pc.cast(label, pa.float64())
    # Order: row_id first, the features, then label; the split is appended last.
    others = [n for n in table.column_names if n not in (ROW_ID, LABEL)]
    table = pa.table(
        [table.column(ROW_ID), *(table.column(n) for n in others), label],
        names=[ROW_ID, *others, LABEL],
    )
    return with_split(table, ROW_ID, features.holdout_fraction, features.seed)


def _as(table: "pa.Table", features: FeaturesSpec) -> Any:
    """The table in the format the team's feature function asked for."""
    if features.table_format == "pyarrow":
        return table
    if features.table_format == "polars":
        import polars as pl

        return pl.from_arrow(table)
    return table.to_pandas()


def label_summary(table: "pa.Table", task: Task) -> dict[str, Any]:
    """Holdout size and what the label looks like, for the features asset's page."""
    import pyarrow.compute as pc

    holdout = int(pc.sum(pc.equal(table.column(SPLIT), "holdout")).as_py() or 0)
    label = table.column(LABEL)
    summary: dict[str, Any] = {"holdout_rows": holdout}
    if task == "binary":
        summary["positive_rate"] = float(pc.mean(label).as_py() or 0.0)
    elif task == "multiclass":
        counts = pc.value_counts(label).to_pylist()
        summary["class_counts"] = dg.MetadataValue.json(
            {str(c["values"]): int(c["counts"]) for c in counts}
        )
    else:
        summary["label_mean"] = float(pc.mean(label).as_py() or 0.0)
        summary["label_stddev"] = float(pc.stddev(label).as_py() or 0.0)
    return summary


def _written(
    context: dg.AssetExecutionContext,
    key_path: Sequence[str],
    table: "pa.Table",
    extra: dict[str, Any],
) -> dg.MaterializeResult:
    from ml_assets.tables import schema_of, write_parquet

    path = storage.asset_file(storage.home(context.instance), key_path, context.run_id)
    version = write_parquet(table, path)
    context.log.info(f"wrote {table.num_rows:,} rows to {path}")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "dagster/row_count": table.num_rows,
            "dagster/column_schema": dg.TableSchema(
                columns=[dg.TableColumn(name=n, type=t) for n, t in schema_of(table)]
            ),
            "data_version": version,
            **extra,
        },
    )
