"""The Vertex AI backend for the contract suite: the official client against ``FakeVertex``,
GCS from gcp-storage-emulator, jobs as real processes running the staged command."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ml_assets_testing.fake_vertex import FakeVertex, GcsEmulator
from ml_assets_testing.harness import BackendHarness

from ml_assets import transport
from ml_assets.backends import remote
from ml_assets.backends.base import JobSpec
from ml_assets.backends.vertex import VertexBackend, VertexSettings

BUCKET = "ml-assets-contract"
STORAGE_ROOT = f"gs://{BUCKET}/root"


def vertex_spec(command: list[str], key: str) -> JobSpec:
    """A spec whose output location follows the asset layer's rule under ``STORAGE_ROOT``."""
    spec = JobSpec(
        team="contract", model="vertex", command=command, output_uri="", idempotency_key=key
    )
    return spec.model_copy(update={"output_uri": remote.output_location(STORAGE_ROOT, spec)})


@pytest.fixture
def vertex_harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BackendHarness]:
    """The Vertex AI backend, its jobs run by a loopback fake with the emulator's env."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with (
        GcsEmulator([BUCKET]) as gcs,
        FakeVertex(tmp_path / "vertex", job_env=gcs.env) as fake,
    ):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        # transport keeps one GCS client per process, bound to the emulator it first saw.
        monkeypatch.setattr(transport, "_cache", {})
        settings = VertexSettings(
            **fake.backend_settings(storage_root=STORAGE_ROOT, sync_seconds=0.5)
        )

        yield BackendHarness(
            name="vertex",
            backend=VertexBackend(settings),
            new_backend=lambda: VertexBackend(settings),
            make_spec=vertex_spec,
            scratch=scratch,
        )
