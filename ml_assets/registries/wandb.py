"""Weights & Biases model registry: runs, model artifacts and registry links (wandb SDK).

Each registration is a W&B run (job type ``register-model``, config = the training params,
summary = the metrics) that logs the model as an artifact of type ``model``, named after the
model by ``artifact_name``, with metadata ``{job_id, metrics, lineage, notes}``. The artifact
holds the model file plus ``ml_assets_registration.json`` (job, metrics, params, lineage), so
two jobs that produced byte-identical models still get two W&B versions: W&B folds an artifact
whose contents match an existing version into that version.

Versions are numbered "1", "2"... in registration order; version ``k`` is W&B's ``v{k-1}``.
``mode`` picks where the truth lives:

- ``online``: in W&B. New versions are linked to the registry collection
  ``wandb-registry-<registry>/<artifact name>`` (the project's own collection when ``registry``
  is None), and reads, alias moves and annotations use that collection through ``wandb.Api()``.
  This machine has no network, so the online path is not exercised by the tests here.
- ``offline``: nothing can be queried, so runs land in ``<dir>/wandb/offline-run-*`` for
  ``wandb sync`` and a JSON catalogue under ``<dir>/ml_assets_registry/<project>/`` mirrors what
  was logged. Alias moves and annotations are runs too, which re-log the version's unchanged
  files with its current aliases and metadata; on sync W&B folds them into the existing version
  and moves the aliases (an alias names one version of a collection). W&B cannot link or remove
  an alias from an offline run, so the intended registry link and alias deletions are recorded
  in the run config (``ml_assets``) for whoever syncs to apply. Run ids start with the time, so
  run folders sort in the order the operations happened: sync them one at a time in that order.

The API key is never a setting: online, the SDK reads ``WANDB_API_KEY`` itself.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from ml_assets.files import file_lock, write_json_atomic
from ml_assets.registries.base import ModelVersion, RegistrationRequest

REGISTRATION_FILE = "ml_assets_registration.json"
ARTIFACT_TYPE = "model"
# W&B puts this alias on every version it logs; it is W&B's, not one of the registry's aliases.
LATEST = "latest"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def artifact_name(model_name: str) -> str:
    """The W&B artifact (and registry collection) name of a model.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``-`` and the name is
    cut to W&B's 128 characters, so ``team.model_ab12`` stays as it is and ``a/b`` is ``a-b``.
    """
    return _UNSAFE.sub("-", model_name)[:128]


class WandbRegistry:
    """``ModelRegistry`` on W&B artifacts; ``mode="offline"`` works with no network."""

    name = "wandb"

    def __init__(
        self,
        project: str,
        entity: str | None = None,
        mode: Literal["online", "offline"] = "online",
        dir: str | Path | None = None,
        registry: str | None = "model",
    ) -> None:
        """``dir`` holds W&B's run folders (default: ``$WANDB_DIR`` or the working directory);
        ``registry`` is the W&B Registry that versions are linked to (None: no link)."""
        if mode not in ("online", "offline"):
            raise ValueError(f"W&B registry mode must be 'online' or 'offline', not {mode!r}")
        self.project = project
        self.entity = entity
        self.mode = mode
        self.dir = Path(dir if dir is not None else os.environ.get("WANDB_DIR", ".")).absolute()
        self.registry = registry
        store = _OfflineStore if mode == "offline" else _OnlineStore
        self._store: _Store = store(project, entity, mode, self.dir, registry)

    def register(self, request: RegistrationRequest) -> ModelVersion:
        return self._store.register(request)

    def list_versions(self, model_name: str) -> list[ModelVersion]:
        return self._store.versions(model_name)

    def get_version(self, model_name: str, version: str) -> ModelVersion | None:
        return next((v for v in self.list_versions(model_name) if v.version == version), None)

    def set_alias(self, model_name: str, version: str, alias: str) -> None:
        self._store.set_alias(model_name, version, alias)

    def delete_alias(self, model_name: str, alias: str) -> None:
        self._store.delete_alias(model_name, alias)

    def get_by_alias(self, model_name: str, alias: str) -> ModelVersion | None:
        return next((v for v in self.list_versions(model_name) if alias in v.aliases), None)

    def annotate(self, model_name: str, version: str, notes: dict[str, Any]) -> None:
        self._store.annotate(model_name, version, notes)


class _Store(ABC):
    """What both modes share: quiet runs, staged artifact files and the artifact itself."""

    def __init__(
        self, project: str, entity: str | None, mode: str, dir: Path, registry: str | None
    ) -> None:
        self.project = project
        self.entity = entity
        self.mode = mode
        self.dir = dir
        self.registry = registry
        self.root = dir / "ml_assets_registry" / project

    def register(self, request: RegistrationRequest) -> ModelVersion:
        with self._lock(request.model_name):
            done = next(
                (v for v in self.versions(request.model_name) if v.job_id == request.job_id), None
            )
            return done if done is not None else self._add(request)

    @abstractmethod
    def _add(self, request: RegistrationRequest) -> ModelVersion:
        """Log and record a new version (under the model's lock)."""

    @abstractmethod
    def _published(self, run: Any, artifact: Any, link_to: str | None) -> Any:
        """The freshly logged model artifact, linked to ``link_to`` where the mode allows."""

    @abstractmethod
    def versions(self, model_name: str) -> list[ModelVersion]: ...

    @abstractmethod
    def set_alias(self, model_name: str, version: str, alias: str) -> None: ...

    @abstractmethod
    def delete_alias(self, model_name: str, alias: str) -> None: ...

    @abstractmethod
    def annotate(self, model_name: str, version: str, notes: dict[str, Any]) -> None: ...

    @contextmanager
    def _lock(self, model_name: str) -> Iterator[None]:
        """Serialise one model's changes on this host, so a job is never registered twice."""
        model_dir = self.root / artifact_name(model_name)
        model_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(model_dir / ".lock"):
            yield

    @contextmanager
    def _run(self, job_type: str, model_name: str, config: dict[str, Any]) -> Iterator[Any]:
        """A short W&B run that is always finished (marked failed if the body raises).

        Console capture, system stats, metadata, git and code saving are off: a run is a
        record of one registry operation, and a quiet one takes tens of milliseconds.
        """
        import wandb

        settings = wandb.Settings(
            mode=self.mode,  # type: ignore[arg-type]
            silent=True,
            console="off",
            save_code=False,
            disable_code=True,
            disable_git=True,
            x_disable_stats=True,
            x_disable_meta=True,
            x_disable_machine_info=True,
            x_save_requirements=False,
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        # Offline folders are named offline-run-<second>-<id>; a time-first id keeps them in
        # operation order within one second too, which is the order they must be synced in.
        run_id = f"{time.time_ns():x}{secrets.token_hex(2)}"
        run = wandb.init(
            project=self.project,
            entity=self.entity,
            dir=str(self.dir),
            id=run_id,
            job_type=job_type,
            group=artifact_name(model_name),
            config=config,
            settings=settings,
            reinit="create_new",
        )
        # Not ``with run:``, which prints the traceback before the caller can handle the error.
        try:
            yield run
        except BaseException:
            run.finish(exit_code=1)
            raise
        run.finish()

    def _log_registration(
        self, request: RegistrationRequest, operation: dict[str, Any]
    ) -> tuple[Any, str, list[str]]:
        """The ``register-model`` run: config = params, summary = metrics, the model artifact.

        Returns the artifact as ``_published`` leaves it, the run id and the staged files.
        """
        lineage = {**request.lineage, "params": request.params}
        files = [str(f) for f in self._stage(request, lineage)]
        metadata = _metadata(request.job_id, request.metrics, lineage, {})
        link_to = self._link_target(request.model_name)
        operation = {
            "operation": "register",
            "model_name": request.model_name,
            "job_id": request.job_id,
            "link_to": link_to,
            **operation,
        }
        config = {**request.params, "ml_assets": operation}
        with self._run("register-model", request.model_name, config) as run:
            run.summary.update(request.metrics)
            artifact = run.log_artifact(self._artifact(request.model_name, files, metadata))
            return self._published(run, artifact, link_to), run.id, files

    def _stage(self, request: RegistrationRequest, lineage: dict[str, Any]) -> list[Path]:
        """Copy the model and write its registration file where later re-logs find them."""
        job_key = hashlib.sha256(request.job_id.encode()).hexdigest()[:16]
        stage = self.root / artifact_name(request.model_name) / "jobs" / job_key
        stage.mkdir(parents=True, exist_ok=True)
        model_file = stage / Path(request.artifact_path).name
        shutil.copyfile(request.artifact_path, model_file)
        registration = stage / REGISTRATION_FILE
        write_json_atomic(
            registration,
            {
                "model_name": request.model_name,
                "job_id": request.job_id,
                "metrics": request.metrics,
                "params": request.params,
                "lineage": lineage,
            },
        )
        return [model_file, registration]

    def _artifact(self, model_name: str, files: list[str], metadata: dict[str, Any]) -> Any:
        """A draft model artifact over ``files``; "immutable" keeps W&B from copying them."""
        import wandb

        artifact = wandb.Artifact(artifact_name(model_name), type=ARTIFACT_TYPE, metadata=metadata)
        for path in files:
            artifact.add_file(path, policy="immutable")
        return artifact

    def _link_target(self, model_name: str) -> str | None:
        if self.registry is None:
            return None
        return f"wandb-registry-{self.registry}/{artifact_name(model_name)}"


class _Entry(BaseModel):
    """One version as the offline catalogue keeps it."""

    version: str
    job_id: str
    metrics: dict[str, float]
    lineage: dict[str, Any]
    notes: dict[str, Any] = Field(default_factory=dict)
    files: list[str]
    digest: str
    run_id: str

    def metadata(self) -> dict[str, Any]:
        return _metadata(self.job_id, self.metrics, self.lineage, self.notes)


class _Catalogue(BaseModel):
    """The offline catalogue of one model: its versions, oldest first, and its aliases."""

    model_name: str
    versions: list[_Entry] = Field(default_factory=list)
    aliases: dict[str, str] = Field(default_factory=dict)

    def entry(self, version: str) -> _Entry | None:
        return next((e for e in self.versions if e.version == version), None)

    def aliases_of(self, version: str) -> list[str]:
        return sorted(a for a, v in self.aliases.items() if v == version)


class _OfflineStore(_Store):
    """Offline runs plus a JSON catalogue that answers every read."""

    def versions(self, model_name: str) -> list[ModelVersion]:
        catalogue = self._read(model_name)
        return [self._version(catalogue, entry) for entry in catalogue.versions]

    def _add(self, request: RegistrationRequest) -> ModelVersion:
        catalogue = self._read(request.model_name)
        version = str(len(catalogue.versions) + 1)
        artifact, run_id, files = self._log_registration(request, {"version": version})
        entry = _Entry(
            version=version,
            job_id=request.job_id,
            metrics=request.metrics,
            lineage=artifact.metadata["lineage"],
            files=files,
            digest=artifact.digest,
            run_id=run_id,
        )
        catalogue.versions.append(entry)
        self._write(catalogue)
        return self._version(catalogue, entry)

    def _published(self, run: Any, artifact: Any, link_to: str | None) -> Any:
        return artifact  # W&B cannot link from an offline run; the run config names the target

    def set_alias(self, model_name: str, version: str, alias: str) -> None:
        with self._lock(model_name):
            catalogue = self._read(model_name)
            entry = self._require(catalogue, version)
            catalogue.aliases[alias] = version
            self._mirror(catalogue, "set-model-alias", entry, {"alias": alias})
            self._write(catalogue)

    def delete_alias(self, model_name: str, alias: str) -> None:
        with self._lock(model_name):
            catalogue = self._read(model_name)
            version = catalogue.aliases.pop(alias, None)
            if version is None:
                return
            entry = self._require(catalogue, version)
            self._mirror(catalogue, "delete-model-alias", entry, {"alias": alias}, relog=False)
            self._write(catalogue)

    def annotate(self, model_name: str, version: str, notes: dict[str, Any]) -> None:
        with self._lock(model_name):
            catalogue = self._read(model_name)
            entry = self._require(catalogue, version)
            entry.notes = {**entry.notes, **notes}
            self._mirror(catalogue, "annotate-model", entry, {"notes": notes})
            self._write(catalogue)

    def _mirror(
        self,
        catalogue: _Catalogue,
        job_type: str,
        entry: _Entry,
        details: dict[str, Any],
        relog: bool = True,
    ) -> None:
        """Record a change as a run, before the catalogue takes it: the run config says what
        changed; with ``relog`` the version is logged again with its new aliases and metadata.
        """
        operation = {
            "operation": job_type,
            "model_name": catalogue.model_name,
            "version": entry.version,
            **details,
            "aliases": catalogue.aliases,
        }
        with self._run(job_type, catalogue.model_name, {"ml_assets": operation}) as run:
            if not relog:
                return
            self._relog(run, catalogue, entry)
            # Every log_artifact also tags the version "latest"; give it back to the newest.
            newest = catalogue.versions[-1]
            if newest.version != entry.version:
                self._relog(run, catalogue, newest)

    def _relog(self, run: Any, catalogue: _Catalogue, entry: _Entry) -> None:
        artifact = self._artifact(catalogue.model_name, entry.files, entry.metadata())
        if artifact.digest != entry.digest:
            raise ValueError(
                f"the staged files of {catalogue.model_name} version {entry.version} changed "
                f"({', '.join(entry.files)}); re-logging them would make a new W&B version"
            )
        run.log_artifact(artifact, aliases=catalogue.aliases_of(entry.version) or None)

    def _version(self, catalogue: _Catalogue, entry: _Entry) -> ModelVersion:
        owner = f"{self.entity}/" if self.entity else ""
        name = artifact_name(catalogue.model_name)
        return ModelVersion(
            registry=WandbRegistry.name,
            model_name=catalogue.model_name,
            version=entry.version,
            uri=f"wandb://{owner}{self.project}/{name}:{_wandb_version(entry.version)}",
            job_id=entry.job_id,
            metrics=entry.metrics,
            lineage=entry.lineage,
            aliases=catalogue.aliases_of(entry.version),
            notes=entry.notes,
        )

    def _require(self, catalogue: _Catalogue, version: str) -> _Entry:
        entry = catalogue.entry(version)
        if entry is None:
            raise ValueError(f"{catalogue.model_name} has no version {version} in {self.root}")
        return entry

    def _path(self, model_name: str) -> Path:
        return self.root / artifact_name(model_name) / "catalogue.json"

    def _read(self, model_name: str) -> _Catalogue:
        path = self._path(model_name)
        if not path.exists():
            return _Catalogue(model_name=model_name)
        # Strict: an unreadable catalogue must fail loudly, never read as "no versions yet".
        catalogue = _Catalogue.model_validate_json(path.read_text(encoding="utf-8"))
        if catalogue.model_name != model_name:
            raise ValueError(
                f"models {catalogue.model_name!r} and {model_name!r} share the W&B artifact "
                f"name {artifact_name(model_name)!r}; rename one of them"
            )
        return catalogue

    def _write(self, catalogue: _Catalogue) -> None:
        write_json_atomic(self._path(catalogue.model_name), catalogue.model_dump(mode="json"))


class _OnlineStore(_Store):
    """W&B itself through ``wandb.Api()``; needs the network, so untested in this repository."""

    def versions(self, model_name: str) -> list[ModelVersion]:
        api = self._api()
        path = self._collection(model_name)
        if not api.artifact_collection_exists(path, type=ARTIFACT_TYPE):
            return []
        found = [self._version(model_name, a) for a in api.artifacts(ARTIFACT_TYPE, path)]
        return sorted(found, key=lambda v: int(v.version))

    def _add(self, request: RegistrationRequest) -> ModelVersion:
        artifact, _, files = self._log_registration(request, {})
        shutil.rmtree(Path(files[0]).parent)  # uploaded; only offline re-logs need the copy
        return self._version(request.model_name, artifact)

    def _published(self, run: Any, artifact: Any, link_to: str | None) -> Any:
        logged = artifact.wait()
        return logged if link_to is None else run.link_artifact(logged, link_to)

    def set_alias(self, model_name: str, version: str, alias: str) -> None:
        # An alias names one version of a collection, so W&B takes it off the old holder.
        artifact = self._artifact_at(model_name, _wandb_version(version))
        artifact.aliases = [*artifact.aliases, alias]
        artifact.save()

    def delete_alias(self, model_name: str, alias: str) -> None:
        api = self._api()
        reference = f"{self._collection(model_name)}:{alias}"
        if not api.artifact_exists(reference, type=ARTIFACT_TYPE):
            return
        artifact = api.artifact(reference, type=ARTIFACT_TYPE)
        artifact.aliases = [a for a in artifact.aliases if a != alias]
        artifact.save()

    def annotate(self, model_name: str, version: str, notes: dict[str, Any]) -> None:
        artifact = self._artifact_at(model_name, _wandb_version(version))
        metadata = dict(artifact.metadata)
        metadata["notes"] = {**metadata.get("notes", {}), **notes}
        artifact.metadata = metadata
        artifact.save()

    def _api(self) -> Any:
        import wandb

        overrides = {"project": self.project}
        if self.entity:
            overrides["entity"] = self.entity
        return wandb.Api(overrides=overrides)

    def _collection(self, model_name: str) -> str:
        """The collection holding the truth: the registry's when linking, else the project's."""
        target = self._link_target(model_name)
        if target is not None:
            return target
        owner = f"{self.entity}/" if self.entity else ""
        return f"{owner}{self.project}/{artifact_name(model_name)}"

    def _artifact_at(self, model_name: str, wandb_version: str) -> Any:
        reference = f"{self._collection(model_name)}:{wandb_version}"
        return self._api().artifact(reference, type=ARTIFACT_TYPE)

    def _version(self, model_name: str, artifact: Any) -> ModelVersion:
        metadata = artifact.metadata
        return ModelVersion(
            registry=WandbRegistry.name,
            model_name=model_name,
            version=str(int(artifact.version.removeprefix("v")) + 1),
            uri=f"wandb://{artifact.qualified_name}",
            job_id=metadata.get("job_id", ""),
            metrics=metadata.get("metrics", {}),
            lineage=metadata.get("lineage", {}),
            aliases=sorted(a for a in artifact.aliases if a != LATEST),
            notes=metadata.get("notes", {}),
        )


def _metadata(
    job_id: str, metrics: dict[str, float], lineage: dict[str, Any], notes: dict[str, Any]
) -> dict[str, Any]:
    """A version's artifact metadata: everything ``ModelVersion`` needs besides its aliases."""
    return {"job_id": job_id, "metrics": metrics, "lineage": lineage, "notes": notes}


def _wandb_version(version: str) -> str:
    """W&B's ``v<n>`` for registry version ``version`` ("1" is ``v0``)."""
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"registry versions are 1, 2, ...; got {version!r}")
    return f"v{int(version) - 1}"
