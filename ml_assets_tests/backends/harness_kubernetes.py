"""The Kubernetes backend in the contract suite: the official client against a loopback fake API
server whose Jobs really run, with ``storage_root`` a local directory (a shared volume)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ml_assets_testing.fake_kubernetes import FakeKubernetes, job_spec
from ml_assets_testing.harness import BackendHarness

from ml_assets.backends.kubernetes import KubernetesBackend


@pytest.fixture
def kubernetes_harness(tmp_path: Path) -> Iterator[BackendHarness]:
    """The Kubernetes backend against ``FakeKubernetes``; every pod is killed at teardown."""
    storage_root = str(tmp_path / "storage")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with FakeKubernetes(tmp_path / "fake") as fake:

        def new_backend() -> KubernetesBackend:
            return fake.settings(storage_root).get_backend()

        yield BackendHarness(
            name="kubernetes",
            backend=new_backend(),
            new_backend=new_backend,
            make_spec=lambda command, key: job_spec(storage_root, command, key, team="contract"),
            scratch=scratch,
        )
