"""Raw data owned by the platform team, written as Parquet and versioned by content hash."""

import os
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from ml_assets import storage
from ml_assets.tables import file_sha256
from ml_assets.tags import TEAM_TAG

ROWS_ENV = "ML_ASSETS_TRANSACTION_ROWS"


def raw_key(source: str) -> dg.AssetKey:
    """The platform's raw-data asset for a source: ``platform/raw_<source>``."""
    return dg.AssetKey(["platform", f"raw_{source}"])


PLATFORM: dict[str, Any] = {
    "group_name": "platform",
    "owners": ["team:platform"],
    "tags": {TEAM_TAG: "platform"},
    # Build raw data that was never built (a fresh instance) so teams can start right away;
    # a failed build is not retried in a loop.
    "automation_condition": (
        dg.AutomationCondition.missing()
        & ~dg.AutomationCondition.in_progress()
        & ~dg.AutomationCondition.execution_failed()
    ),
}


class TransactionsConfig(dg.Config):
    """How much synthetic card-transaction history to generate."""

    rows: int = Field(
        default_factory=lambda: int(os.environ.get(ROWS_ENV, "200000")),
        description="Rows to generate: thousands for a laptop demo, 10 million or more at scale.",
    )
    seed: int = Field(default=7, description="Seed of the generator; same seed, same data.")


def _written(path: Path, rows: int, **extra: Any) -> dg.MaterializeResult:
    version = file_sha256(path)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "dagster/row_count": rows,
            "data_version": version,
            "size_mb": round(path.stat().st_size / 2**20, 2),
            **extra,
        },
    )


def _bundled_source(source: str, description: str, rate_name: str) -> dg.AssetsDefinition:
    """The raw asset of a dataset bundled with scikit-learn: ``datasets.load_<source>()``
    written to Parquet, with the share of positive labels as ``rate_name``."""

    @dg.asset(
        key=raw_key(source),
        description=description,
        code_version="1",
        kinds={"parquet", "scikit-learn"},
        **PLATFORM,
    )
    def raw(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        from ml_assets.platform_data import sources

        frame = getattr(sources, f"load_{source}")()
        path = storage.asset_file(
            storage.home(context.instance), raw_key(source).path, context.run_id
        )
        frame.to_parquet(path, index=False)
        return _written(path, len(frame), **{rate_name: float(frame["label"].mean())})

    return raw


raw_breast_cancer = _bundled_source(
    "breast_cancer",
    "scikit-learn's bundled Wisconsin breast-cancer measurements (569 tumours).",
    "malignant_rate",
)
raw_digits = _bundled_source(
    "digits",
    "scikit-learn's bundled 8x8 handwritten-digit images (1,797), one column per pixel, "
    "with the digit and a binary label: 1 for digits 5-9.",
    "positive_rate",
)


@dg.asset(
    key=raw_key("card_transactions"),
    description=(
        "Synthetic card transactions with a fraud label, generated from a fixed seed; the row "
        f"count is set in the launchpad (`rows`) or with ${ROWS_ENV}."
    ),
    code_version="1",
    kinds={"parquet", "numpy"},
    **PLATFORM,
)
def raw_card_transactions(
    context: dg.AssetExecutionContext, config: TransactionsConfig
) -> dg.MaterializeResult:
    from ml_assets.platform_data.sources import write_card_transactions

    path = storage.asset_file(
        storage.home(context.instance), raw_key("card_transactions").path, context.run_id
    )

    def progress(done: int, total: int) -> None:
        context.log.info(f"generated {done:,} of {total:,} transactions ({done / total:.0%})")

    rows = write_card_transactions(path, rows=config.rows, seed=config.seed, progress=progress)
    return _written(path, rows, seed=config.seed)
