"""The wine team's trainer: a softmax regression fitted by stochastic gradient descent, one
epoch at a time, so the UI shows the loss and accuracy falling while it trains."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def fit(train: pd.DataFrame, hyperparameters: dict[str, Any], context: Any) -> Any:
    """Standardise, then run ``epochs`` passes of SGD on the log loss; report each epoch."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import accuracy_score, log_loss
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    epochs = int(hyperparameters.get("epochs", 40))
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    x = train[list(context.feature_columns)]
    y = train[context.label_column].to_numpy()
    classes = np.asarray(context.classes)
    # Fitted on the frame, so the pipeline checks column names when it predicts later.
    scaler = StandardScaler().fit(x)
    scaled = scaler.transform(x)
    model = SGDClassifier(
        loss="log_loss",
        alpha=float(hyperparameters.get("alpha", 1e-3)),
        learning_rate="adaptive",
        eta0=float(hyperparameters.get("eta0", 0.05)),
        random_state=context.seed,
    )
    order = np.random.default_rng(context.seed)
    for epoch in range(1, epochs + 1):
        rows = order.permutation(len(scaled))
        model.partial_fit(scaled[rows], y[rows], classes=classes)
        probabilities = model.predict_proba(scaled)
        context.report(
            step=epoch,
            progress=0.1 + 0.8 * epoch / epochs,
            metrics={
                "loss": float(log_loss(y, probabilities, labels=model.classes_)),
                "accuracy": float(accuracy_score(y, model.predict(scaled))),
            },
        )
    context.log(f"trained {epochs} epochs of SGD on {len(y)} wines")
    return Pipeline([("scale", scaler), ("model", model)])
