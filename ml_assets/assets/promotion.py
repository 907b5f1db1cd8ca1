"""The promoted-model asset: moves a registered challenger to production, past blocking checks.

Three checks gate every promotion; each is recorded on the asset with its numbers, so the UI's
checks tab says why a version was held back:

* ``beats_champion``: the challenger and the current production model (the champion) are scored
  on the same holdout rows, the challenger's, for the model's task; the challenger must be at
  least as good on the team's primary metric (by default the task's: ROC AUC, macro F1, RMSE),
  plus ``min_improvement``, whichever direction is better for that metric.
* ``training_data_quality``: the challenger's training data has the champion's schema, no nulls
  and no value outside the ranges the team's YAML declares.
* ``no_drift``: no numeric feature's population stability index against the data the champion
  was trained on exceeds ``max_drift_psi`` (``row_id``, ``label`` and ``split`` are not features,
  so a string or float label is never measured).

With no champion yet, the comparisons pass and say so. The decision is written to the
registry (the version's ``promotion`` note) whatever it is; a promoted version takes the
``production`` alias and the one it replaces becomes ``archived``. ``<team>_rollback`` points
production back at the previous version, and is recorded the same way.
"""

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from ml_assets import transport
from ml_assets.assets.common import ModelContext, code_version, latest_metadata
from ml_assets.assets.evaluation import Scoring
from ml_assets.assets.registration import REGISTRY_RESOURCE, resource_registry
from ml_assets.registries.base import (
    ARCHIVED,
    CHALLENGER,
    PRODUCTION,
    ModelRegistry,
    ModelVersion,
)
from ml_assets.tags import TEAM_TAG
from ml_assets.teams.spec import PromotionSpec, TeamSpec

PROMOTION_LOGIC_VERSION = "2"
BEATS_CHAMPION = "beats_champion"
DATA_QUALITY = "training_data_quality"
NO_DRIFT = "no_drift"
PROMOTION_NOTE = "promotion"
ROLLBACK_NOTE = "rollback"


@dataclass
class Gate:
    """The outcome of one promotion check."""

    name: str
    passed: bool
    summary: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_note(self) -> dict[str, Any]:
        return {"passed": self.passed, "summary": self.summary, **self.numbers}


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _lineage(version: ModelVersion, step: str, key: str) -> Any:
    section = version.lineage.get(step)
    return section.get(key) if isinstance(section, dict) else None


class Tables:
    """Parquet tables read once per promotion, however many checks look at them."""

    def __init__(self) -> None:
        self._read: dict[str, Any] = {}

    def of(self, version: ModelVersion, step: str, key: str) -> Any:
        """The table at ``version.lineage[step][key]`` as a pandas DataFrame."""
        import pandas as pd

        uri = str(_lineage(version, step, key))
        if uri not in self._read:
            with transport.local_copy(uri) as path:
                self._read[uri] = pd.read_parquet(path)
        return self._read[uri]


def primary_metric(policy: PromotionSpec, task: str) -> str:
    """The metric champion and challenger are compared on: the team's, or the task's default."""
    from ml_assets.evaluation import default_primary_metric

    return policy.primary_metric or default_primary_metric(task)


def beats_champion(
    challenger: ModelVersion,
    champion: ModelVersion | None,
    policy: PromotionSpec,
    tables: Tables,
    scoring: Scoring,
) -> Gate:
    """Score both models on the challenger's holdout rows and compare the primary metric."""
    from ml_assets.evaluation import (
        TASK_METRICS,
        class_labels,
        evaluate,
        load_model,
        lower_is_better,
        metric_functions,
        predict,
    )

    task = scoring.task
    metric = primary_metric(policy, task)
    if champion is None:
        return Gate(BEATS_CHAMPION, True, "no production version yet: nothing to beat")
    # Only the team's own metric that is compared is computed (a built-in one needs none).
    extra = (
        {}
        if metric in TASK_METRICS[task]
        else {k: f for k, f in metric_functions(scoring.metrics).items() if k == metric}
    )
    frame = tables.of(challenger, "features", "uri")
    holdout = frame[frame["split"] == "holdout"]
    labels = holdout["label"].to_numpy()
    classes = class_labels(frame["label"]) if task == "multiclass" else None

    def score(path: Any) -> float:
        predictions = predict(load_model(path, predict=scoring.predict), holdout, task, classes)
        metrics = evaluate(task, labels, predictions, classes=classes, extra_metrics=extra).metrics
        if metric not in metrics:
            raise ValueError(
                f"the primary metric {metric!r} is not computed for a {task} model; it "
                f"computes {', '.join(sorted(metrics))}"
            )
        return float(metrics[metric])

    with (
        transport.local_copy(str(_lineage(challenger, "training", "artifact_uri"))) as new_path,
        transport.local_copy(str(_lineage(champion, "training", "artifact_uri"))) as old_path,
    ):
        new_value = score(new_path)
        try:
            old_value = score(old_path)
        except Exception as error:  # the champion's format or columns are the past's
            return Gate(
                BEATS_CHAMPION,
                True,
                f"the champion (version {champion.version}) cannot score the new holdout "
                f"({type(error).__name__}: {error}); the data quality check judges the schema "
                "change",
                {"champion_version": champion.version, "metric": metric, "task": task},
            )
    lower_better = lower_is_better(metric)
    margin = (old_value - new_value) if lower_better else (new_value - old_value)
    passed = margin >= policy.min_improvement
    relation = "beats or matches" if passed else "falls short of"
    direction = "lower" if lower_better else "higher"
    return Gate(
        BEATS_CHAMPION,
        passed,
        f"challenger {metric} {new_value:.4f} {relation} champion (version {champion.version}) "
        f"{old_value:.4f} on the same {len(holdout)} holdout rows ({direction} is better; "
        f"needed margin {policy.min_improvement:+.4f}, got {margin:+.4f})",
        {
            "metric": metric,
            "task": task,
            "lower_is_better": lower_better,
            "challenger": round(float(new_value), 6),
            "champion": round(float(old_value), 6),
            "champion_version": champion.version,
            "holdout_rows": len(holdout),
        },
    )


def data_quality(
    challenger: ModelVersion,
    champion: ModelVersion | None,
    policy: PromotionSpec,
    tables: Tables,
    scoring: Scoring,
) -> Gate:
    """Schema against the champion's training data, nulls, and the declared ranges."""
    from ml_assets.quality import null_counts, range_violations, schema_differences, schema_of

    current = tables.of(challenger, "dataset", "path")
    problems: list[str] = []
    numbers: dict[str, Any] = {"rows": len(current), "columns": len(current.columns)}
    if champion is not None and _lineage(champion, "dataset", "path"):
        reference_schema = schema_of(tables.of(champion, "dataset", "path"))
        schema = schema_differences(schema_of(current), reference_schema)
        problems += schema
        numbers["schema_differences"] = schema
    nulls = null_counts(current)
    if nulls:
        problems.append(f"nulls in {', '.join(f'{k} ({v})' for k, v in nulls.items())}")
    numbers["null_counts"] = nulls
    ranges = range_violations(current, dict(policy.ranges))
    problems += [f"{name} out of range: {detail}" for name, detail in ranges.items()]
    numbers["range_violations"] = ranges
    if problems:
        return Gate(DATA_QUALITY, False, "; ".join(problems), numbers)
    against = f"the champion's (version {champion.version})" if champion else "no reference"
    return Gate(
        DATA_QUALITY,
        True,
        f"{len(current)} rows: schema matches {against}, no nulls, "
        f"{len(policy.ranges)} ranged columns within bounds",
        numbers,
    )


def no_drift(
    challenger: ModelVersion,
    champion: ModelVersion | None,
    policy: PromotionSpec,
    tables: Tables,
    scoring: Scoring,
) -> Gate:
    """PSI of each numeric feature, the challenger's training rows against the champion's."""
    from ml_assets.features import feature_columns
    from ml_assets.quality import population_stability

    if champion is None:
        return Gate(NO_DRIFT, True, "no production version yet: no reference to drift from")
    current = tables.of(challenger, "features", "uri")
    reference = tables.of(champion, "features", "uri")
    current = current[current["split"] == "train"]
    reference = reference[reference["split"] == "train"]
    features = feature_columns(current)
    scores = population_stability(reference, current, features)
    worst = max(scores, key=lambda name: scores[name], default=None)
    worst_value = scores[worst] if worst else 0.0
    drifted = {name: value for name, value in scores.items() if value > policy.max_drift_psi}
    numbers = {
        "max_psi": worst_value,
        "max_psi_feature": worst,
        "limit": policy.max_drift_psi,
        "drifted_features": drifted,
        "features_measured": len(scores),
        "features_not_measured": [name for name in features if name not in scores],
        "reference_version": champion.version,
    }
    if drifted:
        listed = ", ".join(f"{name} {value:.3f}" for name, value in sorted(drifted.items()))
        return Gate(
            NO_DRIFT,
            False,
            f"features drifted from the champion's (version {champion.version}) training data "
            f"beyond PSI {policy.max_drift_psi}: {listed}",
            numbers,
        )
    return Gate(
        NO_DRIFT,
        True,
        f"largest feature PSI {worst_value:.3f} ({worst}) within {policy.max_drift_psi}",
        numbers,
    )


GATES = (BEATS_CHAMPION, DATA_QUALITY, NO_DRIFT)


def run_gates(
    challenger: ModelVersion,
    champion: ModelVersion | None,
    policy: PromotionSpec,
    scoring: Scoring | None = None,
) -> list[Gate]:
    """Every promotion check; one that cannot run fails with its error rather than passing.

    ``scoring`` says how the models are scored (task, predict function, extra metrics); by
    default binary models that are the runner's bundles.
    """
    gates = []
    tables = Tables()
    scoring = scoring or Scoring()
    for name, gate in (
        (BEATS_CHAMPION, beats_champion),
        (DATA_QUALITY, data_quality),
        (NO_DRIFT, no_drift),
    ):
        try:
            gates.append(gate(challenger, champion, policy, tables, scoring))
        except Exception as error:  # a check that cannot run must not let the model through
            gates.append(Gate(name, False, f"could not run: {type(error).__name__}: {error}"))
    return gates


def promote(
    registry: ModelRegistry,
    model_name: str,
    version: str,
    gates: list[Gate],
    run_id: str,
) -> dict[str, Any]:
    """Record the decision on the version; if every gate passed, make it production."""
    champion = registry.get_by_alias(model_name, PRODUCTION)
    passed = all(gate.passed for gate in gates)
    note = {
        "decision": "promoted" if passed else "rejected",
        "at": now(),
        "run_id": run_id,
        "checks": {gate.name: gate.to_note() for gate in gates},
        "previous_production": champion.version if champion else None,
    }
    registry.annotate(model_name, version, {PROMOTION_NOTE: note})
    if passed:
        registry.set_alias(model_name, version, PRODUCTION)
        if champion is not None and champion.version != version:
            registry.set_alias(model_name, champion.version, ARCHIVED)
        challenger = registry.get_by_alias(model_name, CHALLENGER)
        if challenger is not None and challenger.version == version:
            registry.delete_alias(model_name, CHALLENGER)
    return note


def rollback(
    registry: ModelRegistry, model_name: str, to_version: str | None, run_id: str, reason: str
) -> dict[str, Any]:
    """Point production back at ``to_version`` (default: the version production replaced)."""
    current = registry.get_by_alias(model_name, PRODUCTION)
    if current is None:
        raise ValueError(f"{model_name} has no production version to roll back")
    promotion = current.notes.get(PROMOTION_NOTE) or {}
    target = to_version or promotion.get("previous_production")
    if not target:
        raise ValueError(
            f"{model_name} version {current.version} replaced no earlier production version; "
            "name the version to roll back to"
        )
    if registry.get_version(model_name, str(target)) is None:
        raise ValueError(f"{model_name} has no version {target}")
    record = {
        "at": now(),
        "run_id": run_id,
        "from_version": current.version,
        "to_version": str(target),
        "reason": reason,
    }
    registry.set_alias(model_name, str(target), PRODUCTION)
    registry.set_alias(model_name, current.version, ARCHIVED)
    registry.annotate(model_name, current.version, {ROLLBACK_NOTE: {**record, "role": "from"}})
    registry.annotate(model_name, str(target), {ROLLBACK_NOTE: {**record, "role": "to"}})
    return record


def _checks_table(gates: list[Gate]) -> str:
    rows = [f"| {g.name} | {'passed' if g.passed else '**failed**'} | {g.summary} |" for g in gates]
    return "\n".join(["| check | result | why |", "| --- | --- | --- |", *rows])


def build_promotion_asset(model: ModelContext) -> dg.AssetsDefinition:
    """The ``<model>_promoted`` asset with its three blocking checks."""
    keys, team, policy = model.keys, model.team, model.spec.promotion
    scoring = Scoring.of(model.spec)
    metric = primary_metric(policy, scoring.task)

    @dg.asset(
        key=keys.promoted,
        deps=[keys.registered],
        output_required=False,
        description=(
            f"The production version of {model.name} in the {team.registry.kind} registry: the "
            f"latest registered version once it beats the champion on {metric}, "
            "its training data passes quality checks and its features have not drifted."
        ),
        automation_condition=dg.AutomationCondition.eager(),
        check_specs=[
            dg.AssetCheckSpec(
                BEATS_CHAMPION,
                asset=keys.promoted,
                blocking=True,
                description="Challenger beats the champion on the same holdout.",
            ),
            dg.AssetCheckSpec(
                DATA_QUALITY,
                asset=keys.promoted,
                blocking=True,
                description="Schema, nulls and ranges of the training data.",
            ),
            dg.AssetCheckSpec(
                NO_DRIFT,
                asset=keys.promoted,
                blocking=True,
                description="Feature PSI against the champion's training data.",
            ),
        ],
        required_resource_keys={REGISTRY_RESOURCE},
        code_version=code_version(PROMOTION_LOGIC_VERSION, policy.model_dump(), scoring.as_dict()),
        **model.asset_settings(team.registry.kind if team.registry.kind != "local" else "python"),
    )
    def promoted(context: dg.AssetExecutionContext) -> Iterator[Any]:
        registered = latest_metadata(context.instance, keys.registered, prefer_run=context.run_id)
        registry = resource_registry(context)
        name = keys.registry_name
        challenger = registry.get_version(name, str(registered["version"]))
        if challenger is None:
            raise dg.Failure(f"{name} version {registered['version']} is not in the registry")
        champion = registry.get_by_alias(name, PRODUCTION)
        if champion is not None and champion.version == challenger.version:
            gates = [
                Gate(g, True, f"version {champion.version} is already production") for g in GATES
            ]
        else:
            gates = run_gates(challenger, champion, policy, scoring)
        note = promote(registry, name, challenger.version, gates, context.run_id)
        for gate in gates:
            context.log.info(
                f"{gate.name}: {'passed' if gate.passed else 'FAILED'}: {gate.summary}"
            )
        if note["decision"] == "promoted":
            yield dg.MaterializeResult(
                metadata={
                    "decision": "promoted",
                    "version": challenger.version,
                    "model_uri": challenger.uri,
                    "previous_production": note["previous_production"] or "",
                    "checks": dg.MetadataValue.md(_checks_table(gates)),
                    "promotion": dg.MetadataValue.json(note),
                }
            )
        for gate in gates:
            yield dg.AssetCheckResult(
                check_name=gate.name,
                passed=gate.passed,
                description=gate.summary,
                metadata={
                    "version": challenger.version,
                    **{k: _metadata_value(v) for k, v in gate.numbers.items()},
                },
            )

    return promoted


def _metadata_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return dg.MetadataValue.json(value)
    return value


class RollbackConfig(dg.Config):
    model: str
    to_version: str = ""
    reason: str = "manual rollback"


def build_rollback_job(team: TeamSpec) -> dg.JobDefinition:
    """``<team>_rollback``: point a model's production alias back at an earlier version."""

    @dg.op(
        name=f"{team.team}_rollback_production",
        tags={"kind": "registry"},
        required_resource_keys={REGISTRY_RESOURCE},
    )
    def rollback_production(context: dg.OpExecutionContext, config: RollbackConfig) -> None:
        if config.model not in team.models:
            raise dg.Failure(
                f"unknown model {config.model!r}; {team.team} has: {', '.join(team.models)}"
            )
        model = ModelContext(team, config.model)
        registry = resource_registry(context)
        try:
            record = rollback(
                registry,
                model.keys.registry_name,
                config.to_version or None,
                context.run_id,
                config.reason,
            )
        except ValueError as error:
            raise dg.Failure(str(error)) from None
        target = registry.get_version(model.keys.registry_name, record["to_version"])
        assert target is not None
        context.log.info(
            f"production for {model.keys.registry_name}: {record['from_version']} -> "
            f"{record['to_version']} ({config.reason})"
        )
        # Recorded as a materialization of the promoted asset, so lineage, the UI and the
        # serving spec (which reacts to it) all follow the rollback.
        context.log_event(
            dg.AssetMaterialization(
                asset_key=model.keys.promoted,
                description=f"Rolled back from version {record['from_version']} to "
                f"{record['to_version']}: {config.reason}",
                metadata={
                    "decision": "rolled_back",
                    "version": record["to_version"],
                    "model_uri": target.uri,
                    "previous_production": record["from_version"],
                    "rollback": dg.MetadataValue.json(record),
                },
            )
        )

    @dg.job(
        name=f"{team.team}_rollback",
        description="Point a model's production alias back at the version it replaced (or at "
        "`to_version`); the rollback is recorded on both versions and on the promoted asset.",
        tags={TEAM_TAG: team.team},
    )
    def rollback_job() -> None:
        rollback_production()

    return rollback_job
