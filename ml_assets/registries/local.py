"""A model registry in plain files: the embedded default, needing no server.

Layout under ``root``: ``<model_name>/<version>/`` holds the artifact, ``version.json`` and the
``notes.json`` that ``annotate`` writes; ``<model_name>/aliases.json`` maps alias names to versions.
Registrations of one model take a file lock, so two at once never get the same number or register
one job twice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ml_assets.files import file_lock, write_json_atomic
from ml_assets.registries.base import ModelVersion, RegistrationRequest


class LocalRegistry:
    """File-backed ``ModelRegistry``."""

    name = "local"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def register(self, request: RegistrationRequest) -> ModelVersion:
        (self.root / request.model_name).mkdir(parents=True, exist_ok=True)
        # One registration per model at a time, so "already registered?" and "next number"
        # cannot interleave.
        with file_lock(self.root / request.model_name / ".lock"):
            return self._register(request)

    def _register(self, request: RegistrationRequest) -> ModelVersion:
        existing = next(
            (v for v in self.list_versions(request.model_name) if v.job_id == request.job_id), None
        )
        if existing is not None:
            return existing
        model_dir = self.root / request.model_name
        number = max((int(p.name) for p in self._version_dirs(request.model_name)), default=0) + 1
        version_dir = model_dir / str(number)
        version_dir.mkdir()
        artifact = version_dir / Path(request.artifact_path).name
        shutil.copy2(request.artifact_path, artifact)
        version = ModelVersion(
            registry=self.name,
            model_name=request.model_name,
            version=str(number),
            uri=str(artifact),
            job_id=request.job_id,
            metrics=request.metrics,
            lineage={**request.lineage, "params": request.params},
        )
        write_json_atomic(
            version_dir / "version.json",
            version.model_dump(mode="json", exclude={"aliases", "notes"}),
        )
        return version

    def list_versions(self, model_name: str) -> list[ModelVersion]:
        aliases = self._aliases(model_name)
        versions = []
        for version_dir in self._version_dirs(model_name):
            document = version_dir / "version.json"
            if not document.exists():  # a registration still copying its artifact
                continue
            versions.append(self._read(version_dir, aliases))
        return versions

    def get_version(self, model_name: str, version: str) -> ModelVersion | None:
        version_dir = self.root / model_name / version
        if not version.isdigit() or not (version_dir / "version.json").exists():
            return None
        return self._read(version_dir, self._aliases(model_name))

    def set_alias(self, model_name: str, version: str, alias: str) -> None:
        self._require(model_name, version)
        with file_lock(self.root / model_name / ".lock"):
            aliases = self._aliases(model_name)
            aliases[alias] = version
            write_json_atomic(self.root / model_name / "aliases.json", aliases)

    def delete_alias(self, model_name: str, alias: str) -> None:
        if not (self.root / model_name).is_dir():
            return
        with file_lock(self.root / model_name / ".lock"):
            aliases = self._aliases(model_name)
            if aliases.pop(alias, None) is not None:
                write_json_atomic(self.root / model_name / "aliases.json", aliases)

    def get_by_alias(self, model_name: str, alias: str) -> ModelVersion | None:
        version = self._aliases(model_name).get(alias)
        return self.get_version(model_name, version) if version else None

    def annotate(self, model_name: str, version: str, notes: dict[str, Any]) -> None:
        self._require(model_name, version)
        with file_lock(self.root / model_name / ".lock"):
            path = self.root / model_name / version / "notes.json"
            current = json.loads(path.read_text()) if path.exists() else {}
            write_json_atomic(path, {**current, **notes})

    def _require(self, model_name: str, version: str) -> None:
        if self.get_version(model_name, version) is None:
            raise ValueError(f"{model_name} has no version {version} in {self.root}")

    def _read(self, version_dir: Path, aliases: dict[str, str]) -> ModelVersion:
        data = json.loads((version_dir / "version.json").read_text())
        data["aliases"] = sorted(a for a, v in aliases.items() if v == data["version"])
        notes = version_dir / "notes.json"
        data["notes"] = json.loads(notes.read_text()) if notes.exists() else {}
        return ModelVersion.model_validate(data)

    def _version_dirs(self, model_name: str) -> list[Path]:
        model_dir = self.root / model_name
        if not model_dir.is_dir():
            return []
        return sorted(
            (p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )

    def _aliases(self, model_name: str) -> dict[str, str]:
        path = self.root / model_name / "aliases.json"
        return json.loads(path.read_text()) if path.exists() else {}
