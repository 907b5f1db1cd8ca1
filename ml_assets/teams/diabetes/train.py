"""The diabetes team's trainer: gradient-boosted regression trees, grown a few trees at a time
(``warm_start``) so the UI shows the training error falling while the job runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def fit(train: pd.DataFrame, hyperparameters: dict[str, Any], context: Any) -> Any:
    """Grow ``n_estimators`` trees, ``report_every`` at a time, reporting the training RMSE
    after each batch; returns the fitted ``GradientBoostingRegressor``."""
    from sklearn.ensemble import GradientBoostingRegressor

    settings = dict(hyperparameters)
    total = int(settings.pop("n_estimators", 300))
    every = int(settings.pop("report_every", 20))
    if total < 1 or every < 1:
        raise ValueError(f"n_estimators and report_every must be >= 1, got {total}, {every}")
    x = train[list(context.feature_columns)]
    y = train[context.label_column].to_numpy(dtype=np.float64)
    model = GradientBoostingRegressor(
        n_estimators=0, warm_start=True, random_state=context.seed, **settings
    )
    grown = 0
    while grown < total:
        grown = min(total, grown + every)
        model.set_params(n_estimators=grown)
        model.fit(x, y)
        rmse = float(np.sqrt(np.mean((model.predict(x) - y) ** 2)))
        context.report(
            step=grown,
            progress=0.1 + 0.8 * grown / total,
            metrics={"train_rmse": rmse},
        )
    context.log(f"grew {total} trees on {len(y)} patients; training RMSE {rmse:.1f}")
    return model
