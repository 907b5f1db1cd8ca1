"""The SageMaker backend in the shared contract suite: boto3 against ``FakeSageMaker``.

The backend is built from YAML-style settings (``load_backend``), its client talks to the
fake's SageMaker front over HTTP, and jobs really run and stage their output to moto's S3.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ml_assets_testing.fake_sagemaker import FakeSageMaker, use_fake_aws
from ml_assets_testing.harness import BackendHarness

from ml_assets.backends import load_backend
from ml_assets.backends.base import Backend, JobSpec
from ml_assets.backends.remote import output_location


@pytest.fixture
def sagemaker_harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BackendHarness]:
    """The SageMaker backend against a fresh ``FakeSageMaker`` and its own S3 bucket."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with FakeSageMaker(tmp_path / "sagemaker") as fake:
        use_fake_aws(fake, monkeypatch)
        storage_root = f"s3://{fake.create_bucket()}/ml-assets"
        settings = fake.backend_settings(storage_root, sync_seconds=0.5)

        def new_backend() -> Backend:
            return load_backend("sagemaker", settings)

        def make_spec(command: list[str], key: str) -> JobSpec:
            draft = JobSpec(
                team="contract",
                model="sagemaker",
                command=command,
                output_uri="",
                idempotency_key=key,
                backend="sagemaker",
            )
            return draft.model_copy(update={"output_uri": output_location(storage_root, draft)})

        yield BackendHarness(
            name="sagemaker",
            backend=new_backend(),
            new_backend=new_backend,
            make_spec=make_spec,
            scratch=scratch,
        )
