"""MLflow Model Registry: tracking run plus registered model version, with aliases (MLflow 3).

The default store is a local SQLite database with a local artifact root, so it works with no
server; point ``tracking_uri`` at an ``mlflow server`` to share it. ``mlflow`` is imported only
here, when the registry is used.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_assets.registries.base import ModelVersion, RegistrationRequest
from ml_assets.tags import (
    REGISTRY_JOB_ID_TAG,
    REGISTRY_LINEAGE_TAG,
    REGISTRY_METRICS_TAG,
    REGISTRY_NOTE_PREFIX,
)

# Model-version tags that carry what ``ModelVersion`` needs, as JSON, so listing versions is one
# search and never a ``get_run`` per version.


class MlflowRegistry:
    """``ModelRegistry`` backed by MLflow tracking and the MLflow Model Registry."""

    name = "mlflow"

    def __init__(self, tracking_uri: str, artifact_root: str | Path | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = Path(artifact_root) if artifact_root else None

    @property
    def _is_server(self) -> bool:
        return self.tracking_uri.startswith(("http://", "https://"))

    @property
    def _sqlite_path(self) -> str | None:
        prefix = "sqlite:///"
        return self.tracking_uri[len(prefix) :] if self.tracking_uri.startswith(prefix) else None

    def _sqlite_lookup(
        self, model_name: str, *, version: str | None = None, alias: str | None = None
    ) -> ModelVersion | None:
        """One version read straight from MLflow's SQLite store, read-only, without mlflow.

        Importing mlflow takes seconds; the audit command's lookups take milliseconds this way.
        Any SQLite error (no such table in a store MLflow has not created yet, another schema)
        falls back to MLflow's own client.
        """
        path = self._sqlite_path
        assert path is not None
        if not Path(path).exists():
            return None
        with contextlib.closing(sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)) as db:
            if alias is not None:
                row = db.execute(
                    "SELECT version FROM registered_model_aliases "
                    "WHERE workspace = 'default' AND name = ? AND alias = ?",
                    (model_name, alias),
                ).fetchone()
                if row is None:
                    return None
                version = str(row[0])
            live = db.execute(
                "SELECT 1 FROM model_versions WHERE workspace = 'default' AND name = ? "
                "AND version = ? AND current_stage != 'Deleted_Internal'",
                (model_name, version),
            ).fetchone()
            if live is None:
                return None
            tags = dict(
                db.execute(
                    "SELECT key, value FROM model_version_tags "
                    "WHERE workspace = 'default' AND name = ? AND version = ?",
                    (model_name, version),
                ).fetchall()
            )
            aliases = [
                row[0]
                for row in db.execute(
                    "SELECT alias FROM registered_model_aliases "
                    "WHERE workspace = 'default' AND name = ? AND version = ?",
                    (model_name, version),
                )
            ]
        return self._version(
            _Found(str(version), tags), model_name, dict.fromkeys(aliases, version)
        )

    def _rest_lookup(self, endpoint: str, **params: str) -> ModelVersion | None:
        """One version through the server's REST API, without importing mlflow (seconds).

        Lookups are what the audit command makes; it answers in well under a second this way.
        ``MLFLOW_TRACKING_TOKEN`` is sent as a bearer token when set.
        """
        import os
        import urllib.error
        import urllib.parse
        import urllib.request

        url = (
            f"{self.tracking_uri.rstrip('/')}/api/2.0/mlflow/{endpoint}?"
            f"{urllib.parse.urlencode(params)}"
        )
        request = urllib.request.Request(url)
        if os.environ.get("MLFLOW_TRACKING_TOKEN"):
            request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                found = json.load(answer)["model_version"]
        except urllib.error.HTTPError as error:
            # An unknown version is a 404; an alias nobody holds, a 400 naming the alias.
            if error.code in (400, 404):
                body = error.read().decode(errors="replace")
                if error.code == 404 or "RESOURCE_DOES_NOT_EXIST" in body or "alias" in body:
                    return None
            raise
        return self._version(
            _Found(str(found["version"]), {t["key"]: t["value"] for t in found.get("tags", [])}),
            params["name"],
            {a: found["version"] for a in found.get("aliases", [])},
        )

    def _client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def register(self, request: RegistrationRequest) -> ModelVersion:
        import joblib
        import mlflow
        import mlflow.sklearn
        import sklearn
        import sklearn.base

        existing = self._by_job(request.model_name, request.job_id)
        if existing is not None:
            return existing
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        experiment_id = self._experiment(request.model_name)
        bundle = joblib.load(request.artifact_path) if request.flavour == "joblib" else None
        lineage = {**request.lineage, "params": request.params}
        version_tags = {
            REGISTRY_JOB_ID_TAG: request.job_id,
            REGISTRY_METRICS_TAG: json.dumps(request.metrics, sort_keys=True),
            REGISTRY_LINEAGE_TAG: json.dumps(lineage, sort_keys=True, default=str),
        }
        with mlflow.start_run(experiment_id=experiment_id, run_name=request.job_id) as run:
            mlflow.log_params({k: str(v)[:500] for k, v in request.params.items()})
            mlflow.log_metrics(request.metrics)
            mlflow.set_tags({REGISTRY_JOB_ID_TAG: request.job_id})
            if bundle is not None and isinstance(
                bundle.get("estimator"), sklearn.base.BaseEstimator
            ):
                # Naming the requirement skips MLflow's slow inference of it in a subprocess.
                mlflow.sklearn.log_model(
                    bundle["estimator"],
                    name="model",
                    pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
                )
            else:
                # Not an sklearn model: the artifact itself, scored by the team's predict.
                mlflow.log_artifact(request.artifact_path, artifact_path="model")
            mlflow.log_artifact(request.artifact_path, artifact_path="ml_assets")
            run_id = run.info.run_id
        client = self._client()
        if not client.search_registered_models(filter_string=f"name = '{request.model_name}'"):
            client.create_registered_model(request.model_name)
        created = client.create_model_version(
            request.model_name,
            source=f"runs:/{run_id}/model",
            run_id=run_id,
            tags=version_tags,
        )
        return self._version(created, request.model_name)

    def _by_job(self, model_name: str, job_id: str) -> ModelVersion | None:
        """The version a training job already registered, found by its tag in one query."""
        found = self._client().search_model_versions(
            filter_string=f"name = '{model_name}' and tags.`{REGISTRY_JOB_ID_TAG}` = '{job_id}'"
        )
        return self._version(found[0], model_name) if found else None

    def list_versions(self, model_name: str) -> list[ModelVersion]:
        client = self._client()
        found = _all_pages(
            lambda token: client.search_model_versions(
                filter_string=f"name = '{model_name}'", page_token=token
            )
        )
        if not found:
            return []
        # Search results leave aliases out; the registered model has them all.
        aliases = client.get_registered_model(model_name).aliases or {}
        versions = [self._version(v, model_name, aliases) for v in found]
        return sorted(versions, key=lambda v: int(v.version))

    def get_version(self, model_name: str, version: str) -> ModelVersion | None:
        if self._is_server:
            return self._rest_lookup("model-versions/get", name=model_name, version=version)
        if self._sqlite_path is not None:
            with contextlib.suppress(sqlite3.Error):
                return self._sqlite_lookup(model_name, version=version)
        from mlflow.exceptions import MlflowException

        client = self._client()
        try:
            found = client.get_model_version(model_name, version)
        except MlflowException:
            return None
        return self._version(found, model_name, {a: found.version for a in found.aliases or []})

    def set_alias(self, model_name: str, version: str, alias: str) -> None:
        self._client().set_registered_model_alias(model_name, alias, version)

    def delete_alias(self, model_name: str, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        if self.get_by_alias(model_name, alias) is None:
            return
        try:
            self._client().delete_registered_model_alias(model_name, alias)
        except MlflowException:
            if self.get_by_alias(model_name, alias) is not None:
                raise

    def get_by_alias(self, model_name: str, alias: str) -> ModelVersion | None:
        if self._is_server:
            return self._rest_lookup("registered-models/alias", name=model_name, alias=alias)
        if self._sqlite_path is not None:
            with contextlib.suppress(sqlite3.Error):
                return self._sqlite_lookup(model_name, alias=alias)
        from mlflow.exceptions import MlflowException

        try:
            found = self._client().get_model_version_by_alias(model_name, alias)
        except MlflowException:
            return None
        return self._version(found, model_name, {a: found.version for a in found.aliases or []})

    def annotate(self, model_name: str, version: str, notes: dict[str, Any]) -> None:
        client = self._client()
        for name, value in notes.items():
            client.set_model_version_tag(
                model_name,
                version,
                f"{REGISTRY_NOTE_PREFIX}{name}",
                json.dumps(value, sort_keys=True),
            )

    def _experiment(self, model_name: str) -> str:
        client = self._client()
        experiment = client.get_experiment_by_name(model_name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = (self.artifact_root / model_name).as_uri() if self.artifact_root else None
        return str(client.create_experiment(model_name, artifact_location=location))

    def _version(
        self, found: Any, model_name: str, aliases: dict[str, Any] | None = None
    ) -> ModelVersion:
        tags = dict(found.tags or {})
        return ModelVersion(
            registry=self.name,
            model_name=model_name,
            version=str(found.version),
            uri=f"models:/{model_name}/{found.version}",
            job_id=tags.get(REGISTRY_JOB_ID_TAG, ""),
            metrics=json.loads(tags.get(REGISTRY_METRICS_TAG, "{}")),
            lineage=json.loads(tags.get(REGISTRY_LINEAGE_TAG, "{}")),
            aliases=sorted(a for a, v in (aliases or {}).items() if str(v) == str(found.version)),
            notes={
                name.removeprefix(REGISTRY_NOTE_PREFIX): json.loads(value)
                for name, value in tags.items()
                if name.startswith(REGISTRY_NOTE_PREFIX)
            },
        )


@dataclass(frozen=True)
class _Found:
    """A version read without mlflow (REST or SQLite): what ``_version`` needs of it."""

    version: str
    tags: dict[str, str]


def _all_pages(fetch: Any) -> list[Any]:
    """Every item of a paged MLflow search, following ``token`` to the end."""
    items: list[Any] = []
    token = None
    while True:
        page = fetch(token)
        items.extend(page)
        token = page.token
        if not token:
            return items
